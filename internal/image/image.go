// Package image assembles the otelcol-tcpack container image from the static distribution
// binary, without a container engine: one layer with the binary, a default config and CA
// certificates, written as a docker-archive tarball (docker/podman load, kind load
// image-archive, ctr images import) and as an OCI layout (skopeo or crane push it).
package image

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Paths inside the image.
const (
	BinaryPath = "/otelcol-tcpack"
	ConfigPath = "/etc/otelcol-tcpack/config.yaml"
	certsPath  = "/etc/ssl/certs/ca-certificates.crt"
	Repository = "otelcol-tcpack"
)

// Inputs are the host files the image is made of.
type Inputs struct {
	Binary string // the static otelcol-tcpack built by ocb
	Config string // the default collector config
	// CACerts is a PEM bundle so the OTLP exporters can verify TLS endpoints; empty leaves it out.
	CACerts string
}

// Build returns the image and its tag (otelcol-tcpack:VERSION, VERSION from the binary's
// --version). Every file and the image itself carry the Unix epoch as time, so the same
// inputs give the same digest.
func Build(in Inputs) (v1.Image, name.Tag, error) {
	version, err := binaryVersion(in.Binary)
	if err != nil {
		return nil, name.Tag{}, err
	}
	tag, err := name.NewTag(Repository + ":" + version)
	if err != nil {
		return nil, name.Tag{}, fmt.Errorf("image tag from version %q: %w", version, err)
	}
	files := []struct {
		src, dst string
		mode     int64
	}{
		{in.Binary, BinaryPath, 0o755},
		{in.Config, ConfigPath, 0o644},
	}
	if in.CACerts != "" {
		files = append(files, struct {
			src, dst string
			mode     int64
		}{in.CACerts, certsPath, 0o644})
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	dirs := map[string]bool{}
	addDir := func(dir string, mode int64) error {
		if dirs[dir] {
			return nil
		}
		dirs[dir] = true
		return tw.WriteHeader(&tar.Header{Typeflag: tar.TypeDir, Name: dir + "/", Mode: mode, ModTime: time.Unix(0, 0)})
	}
	// The collector and Go's os.TempDir expect a writable /tmp.
	if err := addDir("tmp", 0o1777); err != nil {
		return nil, name.Tag{}, err
	}
	for _, f := range files {
		data, err := os.ReadFile(f.src)
		if err != nil {
			return nil, name.Tag{}, fmt.Errorf("image input: %w", err)
		}
		rel := strings.TrimPrefix(f.dst, "/")
		parts := strings.Split(filepath.Dir(rel), "/")
		for i := range parts {
			if parts[i] == "." {
				continue
			}
			if err := addDir(strings.Join(parts[:i+1], "/"), 0o755); err != nil {
				return nil, name.Tag{}, err
			}
		}
		hdr := &tar.Header{Typeflag: tar.TypeReg, Name: rel, Mode: f.mode, Size: int64(len(data)), ModTime: time.Unix(0, 0)}
		if err := tw.WriteHeader(hdr); err != nil {
			return nil, name.Tag{}, err
		}
		if _, err := tw.Write(data); err != nil {
			return nil, name.Tag{}, err
		}
	}
	if err := tw.Close(); err != nil {
		return nil, name.Tag{}, err
	}
	layerBytes := buf.Bytes()
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(layerBytes)), nil },
		tarball.WithMediaType(types.OCILayer))
	if err != nil {
		return nil, name.Tag{}, err
	}
	img, err := mutate.AppendLayers(mutate.MediaType(empty.Image, types.OCIManifestSchema1), layer)
	if err != nil {
		return nil, name.Tag{}, err
	}
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, name.Tag{}, err
	}
	cf = cf.DeepCopy()
	cf.OS, cf.Architecture = "linux", "amd64"
	cf.Created = v1.Time{Time: time.Unix(0, 0)}
	cf.Config = v1.Config{
		Entrypoint: []string{BinaryPath},
		Cmd:        []string{"--config", ConfigPath},
		// Loading eBPF programs needs capabilities that Kubernetes grants only to root's
		// effective set (no ambient capabilities): see deploy/kubernetes.
		User:       "0",
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":       Repository,
			"org.opencontainers.image.version":     version,
			"org.opencontainers.image.description": "OpenTelemetry Collector with the tcpack eBPF receiver",
		},
	}
	img, err = mutate.ConfigFile(img, cf)
	if err != nil {
		return nil, name.Tag{}, err
	}
	return img, tag, nil
}

// Write stores the image as dir/otelcol-tcpack.tar (docker-archive) and dir/oci (OCI layout).
func Write(img v1.Image, tag name.Tag, dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	if err := tarball.WriteToFile(filepath.Join(dir, Repository+".tar"), tag, img); err != nil {
		return fmt.Errorf("write tarball: %w", err)
	}
	ociDir := filepath.Join(dir, "oci")
	if err := os.RemoveAll(ociDir); err != nil {
		return err
	}
	p, err := layout.Write(ociDir, empty.Index)
	if err != nil {
		return fmt.Errorf("write OCI layout: %w", err)
	}
	return p.AppendImage(img, layout.WithAnnotations(map[string]string{
		"org.opencontainers.image.ref.name": tag.TagStr(),
	}))
}

// binaryVersion runs `otelcol-tcpack --version` ("otelcol-tcpack version 0.1.0").
func binaryVersion(bin string) (string, error) {
	out, err := exec.Command(bin, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("%s --version: %w", bin, err)
	}
	fields := strings.Fields(string(out))
	if len(fields) == 0 {
		return "", fmt.Errorf("%s --version printed nothing", bin)
	}
	return fields[len(fields)-1], nil
}
