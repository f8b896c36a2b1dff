//! Test helpers: a real registry (Debian's `docker-registry`) on loopback, OCI layouts built
//! by hand or with `umoci`, pushes with `skopeo`, and tar builders.
//!
//! These tests need root (layers keep owners, whiteouts are device nodes, overlay mounts)
//! and the Debian packages `docker-registry`, `skopeo`, `umoci` and `busybox-static`.

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bora_image::PullProgress;
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

/// A `docker-registry` serving on `127.0.0.1:<free port>`, storing in a temporary directory;
/// killed on drop.
pub struct Registry {
    child: Option<Child>,
    /// The port it listens on.
    pub port: u16,
    /// Its storage root (`storage.filesystem.rootdirectory`).
    pub storage: PathBuf,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Start a registry and wait until it answers `GET /v2/`.
    pub fn start() -> Registry {
        let dir = tempfile::tempdir().unwrap();
        let storage = dir.path().join("storage");
        for _attempt in 0..5 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: true\n\
                     storage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: 127.0.0.1:{port}\n",
                    storage.display()
                ),
            )
            .unwrap();
            let mut child = Command::new("/usr/bin/docker-registry")
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("start /usr/bin/docker-registry (apt install docker-registry)");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if child.try_wait().unwrap().is_some() {
                    break; // lost the port race: try another one
                }
                if http_status(port, "/v2/") == Some(200) {
                    return Registry {
                        child: Some(child),
                        port,
                        storage,
                        _dir: dir,
                    };
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("docker-registry did not start");
    }

    /// `127.0.0.1:<port>`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Stop the registry now.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// The file holding blob `digest` in the registry's storage.
    pub fn blob_data_path(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.storage
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A port that nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The status of a plain HTTP GET on loopback, or `None` if nothing answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(stream, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut response = String::new();
    let _ = stream.read_to_string(&mut response);
    response.split_whitespace().nth(1)?.parse().ok()
}

/// Run a command, panicking with its output if it fails.
pub fn run(command: &mut Command) -> String {
    let output = command
        .output()
        .unwrap_or_else(|e| panic!("{command:?}: {e}"));
    assert!(
        output.status.success(),
        "{command:?} failed: {}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `skopeo copy` an OCI layout image into the registry. `extra` are more skopeo flags
/// (e.g. zstd recompression, `--all`).
pub fn push(layout: &Path, tag: &str, registry: &Registry, name: &str, extra: &[&str]) {
    run(Command::new("skopeo")
        .args(["copy", "--insecure-policy", "--dest-tls-verify=false", "-q"])
        .args(extra)
        .arg(format!("oci:{}:{tag}", layout.display()))
        .arg(format!("docker://{}/{name}", registry.host())));
}

/// Build an OCI layout with `umoci`: one layer with busybox-static as `/bin/busybox`, a
/// `/bin/sh` link, `/etc/hello`, and `CMD ["/bin/busybox", "echo", "hello"]`.
pub fn umoci_busybox_layout(dir: &Path, tag: &str) -> PathBuf {
    let layout = dir.join("layout");
    let bundle = dir.join("bundle");
    let image = format!("{}:{tag}", layout.display());
    run(Command::new("umoci")
        .args(["init", "--layout"])
        .arg(&layout));
    run(Command::new("umoci").args(["new", "--image", &image]));
    run(Command::new("umoci")
        .args(["unpack", "--image", &image])
        .arg(&bundle));
    let rootfs = bundle.join("rootfs");
    std::fs::create_dir_all(rootfs.join("bin")).unwrap();
    std::fs::create_dir_all(rootfs.join("etc")).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .expect("copy /bin/busybox (apt install busybox-static)");
    std::os::unix::fs::symlink("busybox", rootfs.join("bin/sh")).unwrap();
    std::fs::write(rootfs.join("etc/hello"), "hello from umoci\n").unwrap();
    run(Command::new("umoci")
        .args(["repack", "--image", &image])
        .arg(&bundle));
    run(Command::new("umoci").args([
        "config",
        "--image",
        &image,
        "--config.cmd",
        "/bin/busybox",
        "--config.cmd",
        "echo",
        "--config.cmd",
        "hello",
        "--config.env",
        "GREETING=hi",
        "--config.workingdir",
        "/etc",
        "--config.exposedports",
        "8080/tcp",
    ]));
    layout
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One entry of a test tarball.
pub enum Entry<'a> {
    /// A directory with a mode.
    Dir(&'a str, u32),
    /// A regular file with contents and mode.
    File(&'a str, &'a [u8]),
    /// A symlink to a target.
    Symlink(&'a str, &'a str),
}

/// A tarball of `entries`. Names are written raw into the header (no validation), so
/// hostile archives can be made too.
pub fn tarball(entries: &[Entry<'_>]) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    for entry in entries {
        let mut header = tar::Header::new_gnu();
        let (name, kind, data, link, mode): (&str, tar::EntryType, &[u8], Option<&str>, u32) =
            match entry {
                Entry::Dir(name, mode) => (name, tar::EntryType::Directory, b"", None, *mode),
                Entry::File(name, data) => (name, tar::EntryType::Regular, data, None, 0o644),
                Entry::Symlink(name, target) => {
                    (name, tar::EntryType::Symlink, b"", Some(*target), 0o777)
                }
            };
        header.as_old_mut().name[..name.len()].copy_from_slice(name.as_bytes());
        if let Some(link) = link {
            header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        header.set_entry_type(kind);
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(1_700_000_000);
        header.set_cksum();
        builder.append(&header, data).unwrap();
    }
    builder.into_inner().unwrap()
}

/// gzip `bytes`.
pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// A layer as written into a layout.
#[derive(Clone, Debug)]
pub struct Layer {
    /// The blob's descriptor (JSON).
    pub descriptor: Value,
    /// The uncompressed digest.
    pub diff_id: String,
}

/// Writes an OCI image layout by hand.
pub struct LayoutBuilder {
    /// The layout directory.
    pub dir: PathBuf,
}

impl LayoutBuilder {
    /// Create an empty layout at `dir`.
    pub fn new(dir: &Path) -> LayoutBuilder {
        std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
        std::fs::write(dir.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
        LayoutBuilder {
            dir: dir.to_path_buf(),
        }
    }

    /// Store a blob; returns its descriptor.
    pub fn blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        let path = self
            .dir
            .join("blobs/sha256")
            .join(digest.strip_prefix("sha256:").unwrap());
        std::fs::write(path, bytes).unwrap();
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// Store a tarball as a gzip layer.
    pub fn gzip_layer(&self, tar: &[u8]) -> Layer {
        Layer {
            descriptor: self.blob("application/vnd.oci.image.layer.v1.tar+gzip", &gzip(tar)),
            diff_id: sha256(tar),
        }
    }

    /// Store a config and manifest for `layers` on `architecture`; returns the manifest
    /// descriptor (with its platform).
    pub fn image(&self, layers: &[Layer], architecture: &str, cmd: &[&str]) -> Value {
        self.image_with_diff_ids(
            layers,
            layers.iter().map(|l| l.diff_id.clone()).collect(),
            architecture,
            cmd,
        )
    }

    /// Like [`LayoutBuilder::image`] with explicit (possibly wrong) diff_ids.
    pub fn image_with_diff_ids(
        &self,
        layers: &[Layer],
        diff_ids: Vec<String>,
        architecture: &str,
        cmd: &[&str],
    ) -> Value {
        let config = json!({
            "architecture": architecture,
            "os": "linux",
            "config": {"Cmd": cmd, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = self.blob(
            "application/vnd.oci.image.config.v1+json",
            config.to_string().as_bytes(),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config,
            "layers": layers.iter().map(|l| l.descriptor.clone()).collect::<Vec<_>>(),
        });
        let mut descriptor = self.blob(
            "application/vnd.oci.image.manifest.v1+json",
            manifest.to_string().as_bytes(),
        );
        descriptor["platform"] = json!({"os": "linux", "architecture": architecture});
        descriptor
    }

    /// Store an image index of `manifests`; returns its descriptor.
    pub fn index(&self, manifests: &[Value]) -> Value {
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        self.blob(
            "application/vnd.oci.image.index.v1+json",
            index.to_string().as_bytes(),
        )
    }

    /// Write `index.json` with `descriptor` tagged `tag`.
    pub fn tag(&self, entries: &[(Value, &str)]) {
        let manifests: Vec<Value> = entries
            .iter()
            .map(|(descriptor, tag)| {
                let mut d = descriptor.clone();
                d["annotations"] = json!({"org.opencontainers.image.ref.name": tag});
                d
            })
            .collect();
        let index = json!({"schemaVersion": 2, "manifests": manifests});
        std::fs::write(self.dir.join("index.json"), index.to_string()).unwrap();
    }
}

/// Records progress events.
#[derive(Clone, Default)]
pub struct Recorder(pub Arc<Mutex<Vec<PullProgress>>>);

impl Recorder {
    /// The callback to give to `pull`.
    pub fn callback(&self) -> impl Fn(PullProgress) + Send + Sync + use<> {
        let events = self.0.clone();
        move |event| events.lock().unwrap().push(event)
    }

    /// The events so far.
    pub fn events(&self) -> Vec<PullProgress> {
        self.0.lock().unwrap().clone()
    }

    /// Whether any layer was downloaded.
    pub fn downloaded_anything(&self) -> bool {
        self.events().iter().any(|e| {
            matches!(
                e,
                PullProgress::Layer {
                    state: bora_image::LayerState::Downloading,
                    ..
                } | PullProgress::Download { .. }
            )
        })
    }
}

/// Every file and directory under `dir`, relative, sorted.
pub fn tree(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(base).unwrap().display().to_string());
            if entry.file_type().unwrap().is_dir() {
                walk(base, &path, out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
