//! Bora's node agent: everything that touches the machine an instance runs on.
//!
//! One [`Node`] per machine. For each instance it
//! 1. stacks the image's unpacked layers with overlayfs ([`rootfs`]),
//! 2. writes an OCI runtime bundle ([`bundle`]): the image's config plus the
//!    service's command, env and the instance type's cgroup limits,
//! 3. creates a network namespace and attaches it to the node's bridge with
//!    the CNI `bridge` plugin ([`network`]),
//! 4. starts the OCI runtime (`runc`, or `runsc` for gVisor) under a small
//!    supervisor process, the shim ([`shim`]), which outlives a restart of
//!    the server, keeps the logs bounded and records the exit status.
//!
//! An instance without an image (a model served by the built-in engine)
//! runs a program of the host on a root made of the host's `/usr` and its
//! top-level layout, all read-only ([`hostroot`]).
//!
//! Everything about an instance lives in `<data-dir>/instances/<id>/`, so a
//! restarted server finds what is still running ([`Node::recover`]) and
//! cleans up what is not: no leaked processes, mounts, veths or addresses.
//!
//! Sandboxes for AI agents ([`sandbox`]) run on the same machinery, with
//! `bora-envd` as their first process, a size-limited disk ([`disk`]), a
//! point-to-point network and a firewall that lets them out only to their
//! allow-list ([`firewall`]); they live in `<data-dir>/sandboxes/<id>/`.

pub mod bundle;
pub mod cgroup;
pub mod disk;
pub mod firewall;
pub mod health;
pub mod hostroot;
pub mod logs;
pub mod network;
pub mod rootfs;
pub mod runtime;
pub mod sandbox;
pub mod shim;

mod error;
mod node;

pub use error::NodeError;
pub use node::{
    InstanceSpec, InstanceStatus, Mount, NOBODY, Node, NodeConfig, RecoveredInstance, Root,
};
pub use sandbox::{SandboxLimits, SandboxSpec};
