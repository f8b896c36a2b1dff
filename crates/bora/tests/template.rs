//! `bora templates build-base` for real: mmdebstrap downloads Debian packages from
//! deb.debian.org, the result is imported into the image store, and the unpacked image is
//! checked with `chroot`. Takes a minute or two.
//!
//! Needs root, mmdebstrap (`scripts/install-deps.sh`) and access to deb.debian.org: without
//! them the test is skipped with the reason printed. (The one exception to "tests never
//! reach the internet": a Debian mirror is the input of this feature.) Set
//! `BORA_TEMPLATE_MIRROR` to use another mirror.

use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use bora_image::ImageStore;

const BORA: &str = env!("CARGO_BIN_EXE_bora");

/// Why the test cannot run here, if it cannot.
fn skip_reason(mirror_host: &str) -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("building a template needs root".into());
    }
    if !Path::new("/usr/bin/mmdebstrap").exists() {
        return Some("mmdebstrap is not installed (apt install mmdebstrap)".into());
    }
    let reachable = format!("{mirror_host}:80")
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok());
    if !reachable {
        return Some(format!("the Debian mirror {mirror_host} is not reachable"));
    }
    None
}

fn build_base(data_dir: &Path, mirror: &str) -> (Output, Duration) {
    let started = Instant::now();
    let output = Command::new(BORA)
        .args(["templates", "build-base", "--data-dir"])
        .arg(data_dir)
        .args(["--mirror", mirror])
        .output()
        .expect("running bora");
    (output, started.elapsed())
}

fn chroot(root: &Path, userspec: Option<&str>, argv: &[&str]) -> Output {
    let mut command = Command::new("/usr/sbin/chroot");
    if let Some(userspec) = userspec {
        command.arg(format!("--userspec={userspec}"));
    }
    command
        .arg(root)
        .args(argv)
        .env_clear()
        .env("PATH", "/usr/bin:/bin")
        .env("HOME", "/home/user")
        .output()
        .expect("running chroot")
}

#[test]
fn build_base_template_then_use_the_cache() {
    let mirror = std::env::var("BORA_TEMPLATE_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let host = mirror
        .split("://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap_or("deb.debian.org")
        .to_string();
    if let Some(reason) = skip_reason(&host) {
        eprintln!("SKIPPED: {reason}");
        return;
    }
    let data = tempfile::tempdir().unwrap();

    let (cold, cold_time) = build_base(data.path(), &mirror);
    let stderr = String::from_utf8_lossy(&cold.stderr);
    assert!(cold.status.success(), "build-base failed:\n{stderr}");
    eprintln!("cold build: {cold_time:.1?}");
    let pinned = String::from_utf8(cold.stdout).unwrap().trim().to_string();
    assert!(
        pinned.starts_with("bora.local/templates/base@sha256:"),
        "stdout is the pinned reference: {pinned:?}"
    );

    // The image loads like a pulled one, and the name resolves to it.
    let store = ImageStore::open(data.path().join("images")).unwrap();
    let image = store.load(&pinned).unwrap();
    assert_eq!(store.local_image("templates/base").unwrap(), image);
    assert_eq!(image.layers.len(), 1);
    assert_eq!(image.config.working_dir.as_deref(), Some("/home/user"));
    let root = &image.layers[0];

    for file in ["bin/bash", "usr/bin/python3", "usr/bin/pip3", "usr/bin/ps"] {
        assert!(root.join(file).exists(), "{file} is missing");
    }
    assert!(!root.join("usr/bin/sudo").exists(), "sudo is not wanted");
    let passwd = std::fs::read_to_string(root.join("etc/passwd")).unwrap();
    assert!(
        passwd
            .lines()
            .any(|l| l == "user:x:1000:1000::/home/user:/bin/bash"),
        "/etc/passwd:\n{passwd}"
    );
    let group = std::fs::read_to_string(root.join("etc/group")).unwrap();
    assert!(group.lines().any(|l| l == "user:x:1000:"), "{group}");
    let home = std::fs::metadata(root.join("home/user")).unwrap();
    assert_eq!((home.uid(), home.gid()), (1000, 1000));
    assert!(root.join("home/user/.bashrc").is_file(), "skel copied");
    assert!(
        std::fs::read_dir(root.join("var/lib/apt/lists"))
            .map(|d| d
                .flatten()
                .all(|e| e.file_type().unwrap().is_dir() || e.file_name() == "lock"))
            .unwrap_or(true),
        "apt lists are cleaned"
    );

    let run = chroot(root, None, &["/usr/bin/python3", "-c", "print(6*7)"]);
    assert!(run.status.success(), "{run:?}");
    assert_eq!(String::from_utf8_lossy(&run.stdout), "42\n");
    let run = chroot(
        root,
        Some("1000:1000"),
        &[
            "/bin/bash",
            "-c",
            "cd ~ && id -un && touch ok && python3 -c 'print(6*7)'",
        ],
    );
    assert!(run.status.success(), "{run:?}");
    assert_eq!(String::from_utf8_lossy(&run.stdout), "user\n42\n");
    std::fs::remove_file(root.join("home/user/ok")).unwrap();

    // Same inputs: the cached template, at once.
    let (warm, warm_time) = build_base(data.path(), &mirror);
    let stderr = String::from_utf8_lossy(&warm.stderr);
    assert!(warm.status.success(), "{stderr}");
    assert!(
        stderr.contains("using the cached base template"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8(warm.stdout).unwrap().trim(), pinned);
    eprintln!("cached build: {warm_time:.1?}");

    // The image store lost the image: the kept tarball is imported again, same digest.
    std::fs::remove_dir_all(data.path().join("images")).unwrap();
    let (again, again_time) = build_base(data.path(), &mirror);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(again.status.success(), "{stderr}");
    assert!(
        stderr.contains("importing the cached root filesystem"),
        "{stderr}"
    );
    assert_eq!(String::from_utf8(again.stdout).unwrap().trim(), pinned);
    eprintln!("re-import from the cached tarball: {again_time:.1?}");
}
