//! End-to-end pulls against a real registry (`docker-registry` on loopback) and local OCI
//! layouts. Needs root and the Debian packages listed in `common/mod.rs`.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;
use std::process::Command;

use bora_image::{ImageError, ImageStore, LayerState, Platform, PullOptions, PullProgress};
use common::{Entry, LayoutBuilder, Recorder, Registry, push, tarball, tree, umoci_busybox_layout};

fn store(dir: &Path) -> ImageStore {
    ImageStore::open(dir.join("images")).unwrap()
}

fn no_progress(_: PullProgress) {}

#[tokio::test]
async fn pull_by_tag_then_by_digest_reuses_the_cache_and_loads_offline() {
    let work = tempfile::tempdir().unwrap();
    let mut registry = Registry::start();
    let layout = umoci_busybox_layout(work.path(), "latest");
    push(&layout, "latest", &registry, "hello:1", &[]);
    let store = store(work.path());

    let first = Recorder::default();
    let reference = format!("{}/hello:1", registry.host());
    let image = store
        .pull(&reference, &PullOptions::default(), &first.callback())
        .await
        .unwrap();

    assert_eq!(
        image.pinned,
        format!("{}/hello@{}", registry.host(), image.manifest_digest)
    );
    assert_eq!(image.config.cmd, ["/bin/busybox", "echo", "hello"]);
    assert!(image.config.env.contains(&"GREETING=hi".to_string()));
    assert_eq!(image.config.working_dir.as_deref(), Some("/etc"));
    assert_eq!(image.config.exposed_ports, ["8080/tcp"]);
    assert_eq!(image.platform, Platform::host());
    assert_eq!(image.layers.len(), 1);
    let layer = &image.layers[0];
    assert!(layer.starts_with(work.path().join("images/layers/sha256")));
    let busybox = std::fs::metadata(layer.join("bin/busybox")).unwrap();
    assert_eq!(
        busybox.len(),
        std::fs::metadata("/bin/busybox").unwrap().len()
    );
    assert_eq!(busybox.mode() & 0o111, 0o111, "busybox stays executable");
    assert_eq!(
        std::fs::read_link(layer.join("bin/sh")).unwrap(),
        Path::new("busybox")
    );
    assert_eq!(
        std::fs::read_to_string(layer.join("etc/hello")).unwrap(),
        "hello from umoci\n"
    );

    let events = first.events();
    assert_eq!(
        events.first(),
        Some(&PullProgress::Resolving {
            reference: reference.clone()
        })
    );
    assert!(events.contains(&PullProgress::Resolved {
        digest: image.manifest_digest.clone()
    }));
    let states: Vec<LayerState> = events
        .iter()
        .filter_map(|e| match e {
            PullProgress::Layer { state, .. } => Some(*state),
            _ => None,
        })
        .collect();
    assert_eq!(
        states,
        [
            LayerState::Downloading,
            LayerState::Downloaded,
            LayerState::Unpacked
        ]
    );
    assert_eq!(
        events.last(),
        Some(&PullProgress::Done {
            pinned: image.pinned.clone()
        })
    );
    // Layer blobs are dropped once unpacked; nothing is left in tmp.
    assert!(tree(&work.path().join("images/tmp")).is_empty());

    // By digest: same image, nothing downloaded.
    let second = Recorder::default();
    let by_digest = store
        .pull(&image.pinned, &PullOptions::default(), &second.callback())
        .await
        .unwrap();
    assert_eq!(by_digest.manifest_digest, image.manifest_digest);
    assert_eq!(by_digest.layers, image.layers);
    assert!(!second.downloaded_anything(), "{:?}", second.events());
    assert!(second.events().iter().any(|e| matches!(
        e,
        PullProgress::Layer {
            state: LayerState::Cached,
            ..
        }
    )));

    // The registry goes away: loading (and even pulling the pinned digest) still works.
    registry.stop();
    let reopened = ImageStore::open(work.path().join("images")).unwrap();
    let loaded = reopened.load(&image.pinned).unwrap();
    assert_eq!(loaded, image);
    let offline = reopened
        .pull(&image.pinned, &PullOptions::default(), &no_progress)
        .await
        .unwrap();
    assert_eq!(offline, image);
    // By tag needs the registry.
    let err = reopened
        .pull(&reference, &PullOptions::default(), &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
}

#[tokio::test]
async fn pull_from_a_local_oci_layout() {
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_busybox_layout(work.path(), "v1");
    let store = store(work.path());

    let image = store
        .pull(
            &format!("oci:{}:v1", layout.display()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap();
    assert_eq!(
        image.pinned,
        format!("oci:{}@{}", layout.display(), image.manifest_digest)
    );
    assert!(image.layers[0].join("bin/busybox").is_file());
    let again = store
        .pull(&image.pinned, &PullOptions::default(), &no_progress)
        .await
        .unwrap();
    assert_eq!(again, image);
    assert_eq!(store.load(&image.pinned).unwrap(), image);

    // A missing tag lists the tags there are.
    let err = store
        .pull(
            &format!("oci:{}:nope", layout.display()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    assert!(err.to_string().contains("tags: v1"), "{err}");

    // A missing layout says so.
    let missing = work.path().join("no-such-layout");
    let err = store
        .pull(
            &format!("oci:{}", missing.display()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::LayoutNotFound { .. }), "{err}");
    assert!(
        err.to_string().contains(&missing.display().to_string()),
        "{err}"
    );
}

#[tokio::test]
async fn zstd_layers_are_unpacked() {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let layout = umoci_busybox_layout(work.path(), "latest");
    push(
        &layout,
        "latest",
        &registry,
        "hello:zstd",
        &["--dest-compress", "--dest-compress-format", "zstd"],
    );
    // Check that the registry really holds a zstd layer.
    let manifest: serde_json::Value = reqwest::Client::new()
        .get(format!(
            "http://{}/v2/hello/manifests/zstd",
            registry.host()
        ))
        .header("Accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar+zstd"
    );

    let image = store(work.path())
        .pull(
            &format!("{}/hello:zstd", registry.host()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap();
    assert_eq!(
        std::fs::read(image.layers[0].join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
}

/// Layer 1 has files; layer 2 deletes one and makes a directory opaque.
fn two_layer_layout(dir: &Path) -> LayoutBuilder {
    let layout = LayoutBuilder::new(dir);
    let base = layout.gzip_layer(&tarball(&[
        Entry::Dir("etc/", 0o755),
        Entry::File("etc/keep", b"keep\n"),
        Entry::File("etc/gone", b"gone\n"),
        Entry::Dir("data/", 0o755),
        Entry::File("data/old1", b"1"),
        Entry::File("data/old2", b"2"),
    ]));
    let top = layout.gzip_layer(&tarball(&[
        Entry::File("etc/.wh.gone", b""),
        Entry::Dir("data/", 0o755),
        Entry::File("data/.wh..wh..opq", b""),
        Entry::File("data/new", b"new\n"),
    ]));
    let image = layout.image(&[base, top], &Platform::host().architecture, &["/bin/true"]);
    layout.tag(&[(image, "latest")]);
    layout
}

#[tokio::test]
async fn whiteouts_and_opaque_directories_stack_with_overlayfs() {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let layout = two_layer_layout(&work.path().join("layout"));
    push(&layout.dir, "latest", &registry, "layers:2", &[]);

    let image = store(work.path())
        .pull(
            &format!("{}/layers:2", registry.host()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap();
    assert_eq!(image.layers.len(), 2);
    let (base, top) = (&image.layers[0], &image.layers[1]);

    let whiteout = std::fs::symlink_metadata(top.join("etc/gone")).unwrap();
    assert!(whiteout.file_type().is_char_device());
    assert_eq!(whiteout.rdev(), 0, "overlayfs whiteouts are 0:0 devices");
    assert_eq!(
        xattr::get(top.join("data"), "trusted.overlay.opaque").unwrap(),
        Some(b"y".to_vec())
    );
    assert!(base.join("etc/gone").is_file());

    // Stack them the way the node agent does and look at the result.
    let upper = work.path().join("upper");
    let workdir = work.path().join("work");
    let merged = work.path().join("merged");
    for dir in [&upper, &workdir, &merged] {
        std::fs::create_dir(dir).unwrap();
    }
    let options = format!(
        "lowerdir={}:{},upperdir={},workdir={}",
        top.display(),
        base.display(),
        upper.display(),
        workdir.display()
    );
    nix::mount::mount(
        Some("overlay"),
        &merged,
        Some("overlay"),
        nix::mount::MsFlags::empty(),
        Some(options.as_str()),
    )
    .expect("mount overlay");
    let view = tree(&merged);
    nix::mount::umount(&merged).unwrap();
    assert_eq!(view, ["data", "data/new", "etc", "etc/keep"]);
}

/// An image index tagged `multi` with an amd64 and an arm64 image; each has a file `arch`
/// naming its architecture, and `CMD` `/a` or `/b`.
fn multi_arch_layout(dir: &Path) -> LayoutBuilder {
    let layout = LayoutBuilder::new(dir);
    let amd64_layer = layout.gzip_layer(&tarball(&[Entry::File("arch", b"amd64")]));
    let arm64_layer = layout.gzip_layer(&tarball(&[Entry::File("arch", b"arm64")]));
    let amd64 = layout.image(&[amd64_layer], "amd64", &["/a"]);
    let arm64 = layout.image(&[arm64_layer], "arm64", &["/b"]);
    let index = layout.index(&[amd64, arm64]);
    layout.tag(&[(index, "multi")]);
    layout
}

#[tokio::test]
async fn image_index_selects_the_platform() {
    let work = tempfile::tempdir().unwrap();
    let layout = multi_arch_layout(&work.path().join("layout"));
    let store = store(work.path());

    let pull = |platform: &str| {
        let options = PullOptions {
            platform: platform.parse().unwrap(),
            ..PullOptions::default()
        };
        let reference = format!("oci:{}:multi", layout.dir.display());
        let store = &store;
        async move { store.pull(&reference, &options, &no_progress).await }
    };
    for arch in ["amd64", "arm64"] {
        let image = pull(&format!("linux/{arch}")).await.unwrap();
        assert_eq!(image.platform.architecture, arch);
        assert_eq!(
            std::fs::read_to_string(image.layers[0].join("arch")).unwrap(),
            arch
        );
    }
    let err = pull("linux/s390x").await.unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );
    let message = err.to_string();
    assert!(message.contains("linux/s390x"), "{message}");
    assert!(
        message.contains("available: linux/amd64, linux/arm64"),
        "{message}"
    );

    // The same index pushed to a registry is a manifest list there.
    let registry = Registry::start();
    push(&layout.dir, "multi", &registry, "multi:1", &["--all"]);
    let options = PullOptions {
        platform: "linux/arm64".parse().unwrap(),
        ..PullOptions::default()
    };
    let image = store
        .pull(
            &format!("{}/multi:1", registry.host()),
            &options,
            &no_progress,
        )
        .await
        .unwrap();
    assert_eq!(image.config.cmd, ["/b"]);
    let err = store
        .pull(
            &format!("{}/multi:1", registry.host()),
            &PullOptions {
                platform: "linux/riscv64".parse().unwrap(),
                ..PullOptions::default()
            },
            &no_progress,
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, ImageError::NoMatchingPlatform { .. }),
        "{err}"
    );
}

#[tokio::test]
async fn docker_manifest_lists_and_schema2_manifests() {
    let work = tempfile::tempdir().unwrap();
    let layout = multi_arch_layout(&work.path().join("layout"));
    let registry = Registry::start();
    push(
        &layout.dir,
        "multi",
        &registry,
        "docker:1",
        &["--all", "--format", "v2s2"],
    );
    let client = reqwest::Client::new();
    let list = client
        .get(format!("http://{}/v2/docker/manifests/1", registry.host()))
        .header("Accept", bora_image::media_types::MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap();
    assert_eq!(
        list.headers()["content-type"],
        bora_image::media_types::DOCKER_MANIFEST_LIST
    );

    let options = PullOptions {
        platform: "linux/arm64".parse().unwrap(),
        ..PullOptions::default()
    };
    let image = store(work.path())
        .pull(
            &format!("{}/docker:1", registry.host()),
            &options,
            &no_progress,
        )
        .await
        .unwrap();
    assert_eq!(image.config.cmd, ["/b"]);
    assert_eq!(
        std::fs::read_to_string(image.layers[0].join("arch")).unwrap(),
        "arm64"
    );
    let manifest: serde_json::Value = client
        .get(format!(
            "http://{}/v2/docker/manifests/{}",
            registry.host(),
            image.manifest_digest
        ))
        .header("Accept", bora_image::media_types::MANIFEST_ACCEPT)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        manifest["mediaType"],
        bora_image::media_types::DOCKER_MANIFEST
    );
    assert_eq!(
        manifest["layers"][0]["mediaType"],
        "application/vnd.docker.image.rootfs.diff.tar.gzip"
    );
}

#[tokio::test]
async fn unknown_image_is_not_found() {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let reference = format!("{}/nope:1", registry.host());
    let err = store(work.path())
        .pull(&reference, &PullOptions::default(), &no_progress)
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::NotFound { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        format!("image {reference} not found in the registry: check the name and tag")
    );
    assert!(!err.is_retryable());
}

#[tokio::test]
async fn registry_down_is_unreachable_and_retryable() {
    let work = tempfile::tempdir().unwrap();
    let host = format!("127.0.0.1:{}", common::free_port());
    let err = store(work.path())
        .pull(
            &format!("{host}/app:1"),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Unreachable { .. }), "{err}");
    assert!(err.is_retryable());
    let message = err.to_string();
    assert!(message.contains(&host), "{message}");
    assert!(
        message.to_lowercase().contains("connection refused"),
        "{message}"
    );
}

#[tokio::test]
async fn corrupted_blob_is_rejected_and_nothing_is_cached() {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let layout = two_layer_layout(&work.path().join("layout"));
    push(&layout.dir, "latest", &registry, "corrupt:1", &[]);
    // Flip the bytes of the second layer in the registry's storage (same size).
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.dir.join("index.json")).unwrap()).unwrap();
    let manifest_digest = index["manifests"][0]["digest"].as_str().unwrap();
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            layout
                .dir
                .join("blobs/sha256")
                .join(manifest_digest.strip_prefix("sha256:").unwrap()),
        )
        .unwrap(),
    )
    .unwrap();
    let layer_digest = manifest["layers"][1]["digest"].as_str().unwrap();
    let data = registry.blob_data_path(layer_digest);
    let mut bytes = std::fs::read(&data).unwrap();
    for b in bytes.iter_mut().skip(10) {
        *b ^= 0xff;
    }
    std::fs::write(&data, &bytes).unwrap();

    let store = store(work.path());
    let err = store
        .pull(
            &format!("{}/corrupt:1", registry.host()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap_err();
    let ImageError::DigestMismatch {
        expected, actual, ..
    } = &err
    else {
        panic!("expected a digest mismatch, got {err}");
    };
    assert_eq!(expected, layer_digest);
    assert_eq!(actual, &common::sha256(&bytes));
    assert!(err.to_string().contains("discarded"), "{err}");

    let images = work.path().join("images");
    let layer_hex = layer_digest.strip_prefix("sha256:").unwrap();
    assert!(!images.join("blobs/sha256").join(layer_hex).exists());
    assert!(
        tree(&images.join("tmp")).is_empty(),
        "{:?}",
        tree(&images.join("tmp"))
    );
    // The intact layer may be complete; the corrupt one never is.
    let layers = std::fs::read_dir(images.join("layers/sha256"))
        .unwrap()
        .count();
    assert!(layers <= 1, "only the intact layer may be cached");
}

#[tokio::test]
async fn hostile_layer_is_rejected_without_leaving_a_layer() {
    let work = tempfile::tempdir().unwrap();
    let outside = work.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let layout = LayoutBuilder::new(&work.path().join("layout"));
    let evil = layout.gzip_layer(&tarball(&[
        Entry::File("ok", b"fine"),
        Entry::Symlink("escape", outside.to_str().unwrap()),
        Entry::File("escape/pwned", b"pwned"),
    ]));
    let image = layout.image(&[evil], &Platform::host().architecture, &["/x"]);
    layout.tag(&[(image, "latest")]);
    let store = store(work.path());
    let err = store
        .pull(
            &format!("oci:{}", layout.dir.display()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::InvalidLayer { .. }), "{err}");
    assert!(err.to_string().contains("symlink"), "{err}");
    assert!(tree(&outside).is_empty());
    let images = work.path().join("images");
    assert!(tree(&images.join("layers/sha256")).is_empty());
    assert!(tree(&images.join("tmp")).is_empty());
}

#[tokio::test]
async fn wrong_diff_id_is_a_digest_mismatch() {
    let work = tempfile::tempdir().unwrap();
    let layout = LayoutBuilder::new(&work.path().join("layout"));
    let layer = layout.gzip_layer(&tarball(&[Entry::File("a", b"a")]));
    let wrong = common::sha256(b"something else");
    let image = layout.image_with_diff_ids(
        &[layer],
        vec![wrong.clone()],
        &Platform::host().architecture,
        &["/x"],
    );
    layout.tag(&[(image, "latest")]);
    let err = store(work.path())
        .pull(
            &format!("oci:{}:latest", layout.dir.display()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap_err();
    let ImageError::DigestMismatch { expected, .. } = &err else {
        panic!("expected a digest mismatch, got {err}");
    };
    assert_eq!(expected, &wrong);
    assert!(tree(&work.path().join("images/layers/sha256")).is_empty());
}

#[tokio::test]
async fn concurrent_pulls_of_the_same_image_share_the_cache() {
    let work = tempfile::tempdir().unwrap();
    let registry = Registry::start();
    let layout = two_layer_layout(&work.path().join("layout"));
    push(&layout.dir, "latest", &registry, "same:1", &[]);
    let store = std::sync::Arc::new(store(work.path()));
    let reference = format!("{}/same:1", registry.host());
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let store = store.clone();
            let reference = reference.clone();
            tokio::spawn(async move {
                store
                    .pull(&reference, &PullOptions::default(), &no_progress)
                    .await
            })
        })
        .collect();
    let mut images = Vec::new();
    for task in tasks {
        images.push(task.await.unwrap().unwrap());
    }
    assert!(images.windows(2).all(|w| w[0] == w[1]));
    assert_eq!(
        std::fs::read_to_string(images[0].layers[1].join("data/new")).unwrap(),
        "new\n"
    );
    assert_eq!(
        std::fs::read_dir(work.path().join("images/layers/sha256"))
            .unwrap()
            .count(),
        2
    );
    assert!(tree(&work.path().join("images/tmp")).is_empty());
}

#[tokio::test]
async fn the_pulled_image_runs() {
    // The layers are a usable root file system: busybox runs in a chroot of the overlay.
    let work = tempfile::tempdir().unwrap();
    let layout = umoci_busybox_layout(work.path(), "latest");
    let image = store(work.path())
        .pull(
            &format!("oci:{}", layout.display()),
            &PullOptions::default(),
            &no_progress,
        )
        .await
        .unwrap();
    let layer = &image.layers[0];
    let output = common::run(Command::new("chroot").arg(layer).args(&image.config.cmd));
    assert_eq!(output, "hello\n");
}
