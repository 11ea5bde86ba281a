// mkimage builds the otelcol-tcpack container image for `make image`:
//
//	go run ./internal/image/mkimage -binary build/otelcol-tcpack/otelcol-tcpack -out build/image
//	wrote build/image/otelcol-tcpack.tar and build/image/oci: otelcol-tcpack:0.1.0 sha256:...
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/tcpack/tcpack/internal/image"
)

func main() {
	in := image.Inputs{}
	flag.StringVar(&in.Binary, "binary", "build/otelcol-tcpack/otelcol-tcpack", "the static distribution binary")
	flag.StringVar(&in.Config, "config", "deploy/image/config.yaml", "the default collector config")
	flag.StringVar(&in.CACerts, "ca-certs", "/etc/ssl/certs/ca-certificates.crt", "PEM bundle for TLS exporters (empty: none)")
	out := flag.String("out", "build/image", "output directory")
	flag.Parse()
	img, tag, err := image.Build(in)
	if err == nil {
		err = image.Write(img, tag, *out)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	digest, err := img.Digest()
	if err != nil {
		fmt.Fprintln(os.Stderr, "mkimage:", err)
		os.Exit(1)
	}
	fmt.Printf("wrote %s/%s.tar and %s/oci: %s %s\n", *out, image.Repository, *out, tag, digest)
}
