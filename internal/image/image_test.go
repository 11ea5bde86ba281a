package image_test

import (
	"archive/tar"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"

	"github.com/tcpack/tcpack/internal/collectortest"
	"github.com/tcpack/tcpack/internal/image"
)

func repoFile(t *testing.T, rel string) string {
	t.Helper()
	p, err := filepath.Abs(filepath.Join("..", "..", rel))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestImageRunsFromItsOwnRootfs builds the image as `make image` does, reads it back from the
// tarball a container runtime would load, and runs the binary chrooted into the extracted
// root file system: it must need nothing the image does not carry.
func TestImageRunsFromItsOwnRootfs(t *testing.T) {
	in := image.Inputs{Binary: collectortest.Binary(t), Config: repoFile(t, "deploy/image/config.yaml")}
	if _, err := os.Stat("/etc/ssl/certs/ca-certificates.crt"); err == nil {
		in.CACerts = "/etc/ssl/certs/ca-certificates.crt"
	}
	img, tag, err := image.Build(in)
	if err != nil {
		t.Fatal(err)
	}
	out := t.TempDir()
	if err := image.Write(img, tag, out); err != nil {
		t.Fatal(err)
	}
	if tag.String() != "otelcol-tcpack:0.1.0" {
		t.Errorf("tag %s, want otelcol-tcpack:0.1.0 (builder-config.yaml dist.version)", tag)
	}

	loaded, err := tarball.ImageFromPath(filepath.Join(out, image.Repository+".tar"), &tag)
	if err != nil {
		t.Fatalf("the tarball does not load as %s: %v", tag, err)
	}
	cf, err := loaded.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "amd64" {
		t.Errorf("platform %s/%s, want linux/amd64", cf.OS, cf.Architecture)
	}
	if !slices.Equal(cf.Config.Entrypoint, []string{image.BinaryPath}) ||
		!slices.Equal(cf.Config.Cmd, []string{"--config", image.ConfigPath}) || cf.Config.User != "0" {
		t.Errorf("entrypoint %q, cmd %q, user %q; want [%s], [--config %s], 0",
			cf.Config.Entrypoint, cf.Config.Cmd, cf.Config.User, image.BinaryPath, image.ConfigPath)
	}

	// The OCI layout holds the same image under the tag's name.
	idx, err := layout.ImageIndexFromPath(filepath.Join(out, "oci"))
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	// A docker-archive tarball carries the config as is but no manifest of its own: the
	// config's digest is what identifies the image across both forms.
	wantConfig, _ := img.ConfigName()
	if got, _ := loaded.ConfigName(); got != wantConfig {
		t.Errorf("tarball image config %s, built %s", got, wantConfig)
	}
	want, _ := img.Digest()
	if len(manifest.Manifests) != 1 || manifest.Manifests[0].Digest != want ||
		manifest.Manifests[0].Annotations["org.opencontainers.image.ref.name"] != tag.TagStr() {
		t.Errorf("OCI layout index %+v, want one manifest %s named %s", manifest.Manifests, want, tag.TagStr())
	}

	// Same inputs, same digest: the image is reproducible.
	again, _, err := image.Build(in)
	if err != nil {
		t.Fatal(err)
	}
	if d, _ := again.Digest(); d != want {
		t.Errorf("rebuilding gave digest %s, first build %s", d, want)
	}

	rootfs := t.TempDir()
	extract(t, loaded, rootfs)
	run := func(args ...string) string {
		cmd := exec.Command(image.BinaryPath, args...)
		cmd.SysProcAttr = &syscall.SysProcAttr{Chroot: rootfs}
		cmd.Dir = "/"
		cmd.Env = []string{}
		outb, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("%s %s in the image's rootfs: %v\n%s", image.BinaryPath, strings.Join(args, " "), err, outb)
		}
		return string(outb)
	}
	if os.Geteuid() != 0 {
		t.Skip("chroot into the extracted rootfs needs root")
	}
	if v := run("--version"); !strings.Contains(v, "otelcol-tcpack version 0.1.0") {
		t.Errorf("--version in the image: %q", v)
	}
	// The baked-in config is valid for the binary beside it.
	run("validate", "--config", image.ConfigPath)
	if in.CACerts != "" {
		if _, err := os.Stat(filepath.Join(rootfs, "etc/ssl/certs/ca-certificates.crt")); err != nil {
			t.Errorf("CA bundle missing from the image: %v", err)
		}
	}
}

// extract unpacks the image's flattened file system into dir, as a runtime would.
func extract(t *testing.T, img v1.Image, dir string) {
	t.Helper()
	rc := mutate.Extract(img)
	defer rc.Close()
	tr := tar.NewReader(rc)
	for {
		hdr, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return
		}
		if err != nil {
			t.Fatal(err)
		}
		target := filepath.Join(dir, filepath.Clean("/"+hdr.Name))
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := os.MkdirAll(target, os.FileMode(hdr.Mode)&os.ModePerm); err != nil {
				t.Fatal(err)
			}
		case tar.TypeReg:
			if err := os.MkdirAll(filepath.Dir(target), 0o755); err != nil {
				t.Fatal(err)
			}
			f, err := os.OpenFile(target, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, os.FileMode(hdr.Mode)&os.ModePerm)
			if err != nil {
				t.Fatal(err)
			}
			if _, err := io.Copy(f, tr); err != nil {
				t.Fatal(err)
			}
			f.Close()
		default:
			t.Fatalf("unexpected entry %s (type %c) in the image", hdr.Name, hdr.Typeflag)
		}
	}
}
