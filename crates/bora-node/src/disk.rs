//! A sandbox's disk: the writable layer of its root filesystem, on an ext4
//! filesystem of exactly the sandbox's disk size, in a sparse file of its
//! own, loop-mounted.
//!
//! Why a loop-mounted image and not a size-limited tmpfs: a tmpfs lives in
//! RAM, so a sandbox's disk would be memory, charged to whichever cgroup
//! wrote the pages (under gVisor that is the gofer, outside the sandbox's
//! limit), and a node could not offer disks larger than its RAM. A sparse
//! image costs disk only for what the sandbox writes, is bounded by its
//! size (a filler gets ENOSPC, the host never fills), and disappears with
//! one unmount and one unlink. Its cost is the start: `mkfs.ext4` and a loop
//! mount take tens of milliseconds (measured in the report of the sandbox
//! tests; see `crates/bora-node/tests/sandbox.rs`).
//!
//! The filesystem is built for a throwaway disk: no journal (a sandbox does
//! not survive a host crash, so there is nothing to replay), inode tables
//! left for the kernel to treat as zero (`lazy_itable_init` and the mount's
//! `noinit_itable`: the file is sparse, so they *are* zero), nothing
//! reserved for root (root in the sandbox would use it anyway).

use std::path::Path;

use tokio::process::Command;

use crate::{NodeError, rootfs};

/// The smallest disk a sandbox can have: ext4's own metadata needs a few
/// MiB before anything fits.
pub const MIN_BYTES: u64 = 16 * 1024 * 1024;

/// `mkfs.ext4`'s arguments for an image of a throwaway disk.
pub fn mkfs_args(image: &Path) -> Vec<String> {
    [
        "-q",
        "-F",
        "-O",
        "^has_journal",
        "-E",
        "lazy_itable_init=1,nodiscard",
        "-m",
        "0",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([image.display().to_string()])
    .collect()
}

async fn run(program: &str, args: &[String]) -> Result<(), NodeError> {
    let command = format!("{program} {}", args.join(" "));
    let out = Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NodeError::MissingProgram {
                program: program.into(),
                path: program.into(),
                package: if program == "mkfs.ext4" {
                    "e2fsprogs"
                } else {
                    "mount"
                },
            },
            _ => NodeError::Command {
                command: command.clone(),
                detail: e.to_string(),
            },
        })?;
    if !out.status.success() {
        return Err(NodeError::Command {
            command,
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// Creates a `bytes`-sized disk in `image` and mounts it at `mount`.
/// Nothing is left behind if a step fails.
pub async fn create(image: &Path, mount: &Path, bytes: u64) -> Result<(), NodeError> {
    if rootfs::is_mounted(mount) {
        return Ok(());
    }
    let made = async {
        std::fs::create_dir_all(mount).map_err(|e| NodeError::io(mount, e))?;
        let file = std::fs::File::create(image).map_err(|e| NodeError::io(image, e))?;
        file.set_len(bytes.max(MIN_BYTES))
            .map_err(|e| NodeError::io(image, e))?;
        drop(file);
        run("mkfs.ext4", &mkfs_args(image)).await?;
        // mount(8) sets the loop device up with autoclear: it goes away
        // with the unmount.
        run(
            "mount",
            &[
                "-t".into(),
                "ext4".into(),
                "-o".into(),
                "loop,noinit_itable".into(),
                image.display().to_string(),
                mount.display().to_string(),
            ],
        )
        .await
    };
    let result = made.await;
    if result.is_err() {
        let _ = std::fs::remove_file(image);
    }
    result
}

/// Unmounts the disk and deletes its image. Idempotent. Waits (a little)
/// for the kernel to let go of the loop device, which it does after the
/// unmount returns, so that nothing of the disk is left when this does.
pub async fn remove(image: &Path, mount: &Path) -> Result<(), NodeError> {
    let device = mount_source(mount);
    rootfs::unmount(mount)?;
    if let Some(name) = device.as_deref().and_then(|d| d.strip_prefix("/dev/")) {
        let backing = Path::new("/sys/block").join(name).join("loop/backing_file");
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(2);
        while backing.exists() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
    }
    match std::fs::remove_file(image) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(NodeError::io(image, e)),
        _ => Ok(()),
    }
}

/// What is mounted at `path` (e.g. `/dev/loop3`), from /proc/self/mountinfo.
fn mount_source(path: &Path) -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let wanted = path.display().to_string();
    info.lines()
        .filter(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
        .filter_map(|line| line.split(" - ").nth(1)?.split(' ').nth(1))
        .next_back()
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_filesystem_is_built_for_a_throwaway_disk() {
        let args = mkfs_args(Path::new("/d/disk.img"));
        assert_eq!(args.last().unwrap(), "/d/disk.img");
        let joined = args.join(" ");
        assert!(joined.contains("-O ^has_journal"));
        assert!(joined.contains("-m 0"));
        assert!(joined.contains("lazy_itable_init=1"));
    }
}
