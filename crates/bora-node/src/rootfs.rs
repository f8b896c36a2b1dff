//! An instance's root filesystem: the image's read-only layers stacked with
//! overlayfs, topped by a writable directory of the instance's own.

use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};

use crate::NodeError;

/// The overlay mount option string: layers are given lowest first, overlayfs
/// wants the top-most lower directory first.
pub fn overlay_options(layers: &[PathBuf], upper: &Path, work: &Path) -> String {
    let lower: Vec<String> = layers
        .iter()
        .rev()
        .map(|p| p.display().to_string())
        .collect();
    format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        upper.display(),
        work.display()
    )
}

/// Mounts the overlay at `target`, creating `upper`, `work` and `target`.
/// Mounting over an existing mount of the same instance is avoided by the
/// caller checking [`is_mounted`] first.
pub fn mount_overlay(
    layers: &[PathBuf],
    upper: &Path,
    work: &Path,
    target: &Path,
) -> Result<(), NodeError> {
    for dir in [upper, work, target] {
        std::fs::create_dir_all(dir).map_err(|e| NodeError::io(dir, e))?;
    }
    if layers.is_empty() {
        return Err(NodeError::Start {
            instance: target.display().to_string(),
            detail: "the image has no layers".into(),
        });
    }
    let options = overlay_options(layers, upper, work);
    // Overlay's options must fit in one page.
    if options.len() >= 4000 {
        return Err(NodeError::Start {
            instance: target.display().to_string(),
            detail: format!(
                "the image has too many layers ({}) to stack with overlayfs here; squash it",
                layers.len()
            ),
        });
    }
    mount(
        Some("overlay"),
        target,
        Some("overlay"),
        MsFlags::empty(),
        Some(options.as_str()),
    )
    .map_err(|e| NodeError::Command {
        command: format!("mount -t overlay overlay {}", target.display()),
        detail: e.desc().to_string(),
    })
}

/// True when `path` is a mount point (listed in /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let wanted = path.display().to_string();
    info.lines()
        .any(|line| line.split(' ').nth(4) == Some(wanted.as_str()))
}

/// Unmounts `path` if mounted; falls back to a lazy detach when busy so a
/// stuck process never blocks cleanup.
pub fn unmount(path: &Path) -> Result<(), NodeError> {
    if !is_mounted(path) {
        return Ok(());
    }
    match umount2(path, MntFlags::empty()) {
        Ok(()) => Ok(()),
        Err(nix::errno::Errno::EBUSY) => {
            umount2(path, MntFlags::MNT_DETACH).map_err(|e| NodeError::Command {
                command: format!("umount -l {}", path.display()),
                detail: e.desc().to_string(),
            })
        }
        Err(nix::errno::Errno::EINVAL) | Err(nix::errno::Errno::ENOENT) => Ok(()),
        Err(e) => Err(NodeError::Command {
            command: format!("umount {}", path.display()),
            detail: e.desc().to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_layer_comes_first() {
        let layers = vec![PathBuf::from("/l/base"), PathBuf::from("/l/top")];
        assert_eq!(
            overlay_options(&layers, Path::new("/u"), Path::new("/w")),
            "lowerdir=/l/top:/l/base,upperdir=/u,workdir=/w"
        );
    }
}
