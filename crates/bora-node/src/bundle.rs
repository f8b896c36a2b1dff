//! The OCI runtime bundle's `config.json`, built from the image's config and
//! the service's spec. Pure functions: everything here is testable without
//! root.
//!
//! Defaults follow what images expect from Docker: its default capability
//! set, a private `/dev`, `/proc`, `/sys` read-only, `/etc/hosts`,
//! `/etc/resolv.conf` and `/etc/hostname` bind-mounted from the instance's
//! directory.

use std::path::Path;

use bora_api::{Isolation, Limits};
use serde_json::{Value, json};

/// The process to run, resolved from the image config and the service spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub uid: u32,
    pub gid: u32,
    pub additional_gids: Vec<u32>,
}

/// Combines entrypoint and command the way Docker does: a service `command`
/// replaces both; a service `args` replaces only the image's `Cmd`.
pub fn process_args(
    image_entrypoint: &[String],
    image_cmd: &[String],
    command: Option<&[String]>,
    args: Option<&[String]>,
) -> Vec<String> {
    match (command, args) {
        (Some(command), Some(args)) => command.iter().chain(args).cloned().collect(),
        (Some(command), None) => command.to_vec(),
        (None, Some(args)) => image_entrypoint.iter().chain(args).cloned().collect(),
        (None, None) => image_entrypoint.iter().chain(image_cmd).cloned().collect(),
    }
}

/// Merges environments: later entries override earlier ones with the same
/// name; `PATH` gets a default if nobody set it.
pub fn merge_env(image_env: &[String], service_env: &[(String, String)]) -> Vec<String> {
    let mut out: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        if let Some(slot) = out.iter_mut().find(|(name, _)| name == k) {
            slot.1 = v.to_string();
        } else {
            out.push((k.to_string(), v.to_string()));
        }
    };
    for entry in image_env {
        let (k, v) = entry.split_once('=').unwrap_or((entry, ""));
        set(k, v);
    }
    for (k, v) in service_env {
        set(k, v);
    }
    if !out.iter().any(|(k, _)| k == "PATH") {
        out.insert(
            0,
            (
                "PATH".into(),
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            ),
        );
    }
    out.into_iter().map(|(k, v)| format!("{k}={v}")).collect()
}

/// Resolves an image's `User` (`""`, `1000`, `1000:1000`, `app`, `app:staff`)
/// against the image's `/etc/passwd` and `/etc/group` contents.
pub fn resolve_user(
    user: &str,
    passwd: Option<&str>,
    group: Option<&str>,
) -> Result<(u32, u32, Vec<u32>), String> {
    let (user_part, group_part) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let passwd_entry = |pred: &dyn Fn(&[&str]) -> bool| -> Option<(String, u32, u32)> {
        passwd?.lines().find_map(|line| {
            let f: Vec<&str> = line.split(':').collect();
            if f.len() >= 4 && pred(&f) {
                Some((f[0].to_string(), f[2].parse().ok()?, f[3].parse().ok()?))
            } else {
                None
            }
        })
    };
    let (name, uid, mut gid) = if user_part.is_empty() {
        ("root".to_string(), 0, 0)
    } else if let Ok(uid) = user_part.parse::<u32>() {
        passwd_entry(&|f| f[2] == user_part)
            .map(|(n, _, g)| (n, uid, g))
            .unwrap_or((String::new(), uid, uid))
    } else {
        passwd_entry(&|f| f[0] == user_part)
            .ok_or_else(|| format!("user {user_part:?} is not in the image's /etc/passwd"))?
    };
    if let Some(g) = group_part {
        gid = match g.parse::<u32>() {
            Ok(gid) => gid,
            Err(_) => group
                .and_then(|group| {
                    group.lines().find_map(|line| {
                        let f: Vec<&str> = line.split(':').collect();
                        (f.len() >= 3 && f[0] == g)
                            .then(|| f[2].parse().ok())
                            .flatten()
                    })
                })
                .ok_or_else(|| format!("group {g:?} is not in the image's /etc/group"))?,
        };
    }
    let additional = group
        .map(|group| {
            group
                .lines()
                .filter_map(|line| {
                    let f: Vec<&str> = line.split(':').collect();
                    let member =
                        f.len() >= 4 && !name.is_empty() && f[3].split(',').any(|m| m == name);
                    member.then(|| f[2].parse().ok()).flatten()
                })
                .filter(|g| *g != gid)
                .collect()
        })
        .unwrap_or_default();
    Ok((uid, gid, additional))
}

/// Docker's default capability set: what most images expect.
const CAPABILITIES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

/// System calls an instance never needs and that reach kernel state shared
/// with the host (keyrings, modules, clocks, swap, mounts, io_uring's large
/// attack surface…). Most are also gated by capabilities the instance does
/// not have; the filter is the second wall. They fail with EPERM.
const DENIED_SYSCALLS: &[&str] = &[
    "acct",
    "add_key",
    "bpf",
    "clock_adjtime",
    "clock_settime",
    "create_module",
    "delete_module",
    "finit_module",
    "fsconfig",
    "fsmount",
    "fsopen",
    "fspick",
    "get_kernel_syms",
    "init_module",
    "io_uring_enter",
    "io_uring_register",
    "io_uring_setup",
    "ioperm",
    "iopl",
    "kcmp",
    "kexec_file_load",
    "kexec_load",
    "keyctl",
    "lookup_dcookie",
    "mount",
    "mount_setattr",
    "move_mount",
    "name_to_handle_at",
    "nfsservctl",
    "open_by_handle_at",
    "open_tree",
    "perf_event_open",
    "pivot_root",
    "process_vm_readv",
    "process_vm_writev",
    "query_module",
    "quotactl",
    "reboot",
    "request_key",
    "setns",
    "settimeofday",
    "swapoff",
    "swapon",
    "sysfs",
    "_sysctl",
    "umount2",
    "unshare",
    "uselib",
    "userfaultfd",
    "ustat",
];

/// The seccomp filter for `isolation: container`: allow by default, deny
/// [`DENIED_SYSCALLS`], on this machine's architecture and its 32-bit
/// companions (so the 32-bit entry points are filtered too).
pub fn seccomp_profile() -> Value {
    let architectures: &[&str] = match std::env::consts::ARCH {
        "x86_64" => &["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
        "aarch64" => &["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
        _ => &[],
    };
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": architectures,
        "syscalls": [{
            "names": DENIED_SYSCALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": 1
        }]
    })
}

/// Where the instance's files are, for the bind mounts.
pub struct BundlePaths<'a> {
    pub hosts: &'a Path,
    pub resolv_conf: &'a Path,
    pub hostname_file: &'a Path,
    /// The network namespace to join (runc). gVisor is started inside the
    /// namespace instead, so its spec joins none.
    pub netns: &'a Path,
    /// More host paths to bind-mount (a sandbox's agent, for one).
    pub binds: &'a [Bind<'a>],
}

/// A host path bind-mounted into the container.
#[derive(Debug, Clone, Copy)]
pub struct Bind<'a> {
    pub destination: &'a str,
    pub source: &'a Path,
    pub read_only: bool,
}

impl Bind<'_> {
    fn mount(&self) -> Value {
        let mut options = vec!["rbind", "rprivate"];
        if self.read_only {
            options.extend(["ro", "nosuid", "nodev"]);
        }
        json!({"destination": self.destination, "type": "bind", "source": self.source, "options": options})
    }
}

/// CFS period for CPU limits, in microseconds.
const CPU_PERIOD: u64 = 100_000;

/// Builds `config.json` (OCI runtime spec 1.0).
pub fn runtime_config(
    process: &Process,
    hostname: &str,
    limits: Limits,
    isolation: Isolation,
    cgroup_path: &str,
    paths: &BundlePaths<'_>,
) -> Value {
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
    ];
    if isolation == Isolation::Container {
        namespaces.push(json!({"type": "network", "path": paths.netns}));
    }
    // gVisor filters system calls in its own kernel; runc needs the filter.
    let seccomp = (isolation == Isolation::Container).then(seccomp_profile);
    let caps = CAPABILITIES;
    let bind = |destination, source| {
        Bind {
            destination,
            source,
            read_only: false,
        }
        .mount()
    };
    let mut mounts = json!([
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
         "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
         "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs",
         "options": ["nosuid", "noexec", "nodev", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
         "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]},
        bind("/etc/hosts", paths.hosts),
        bind("/etc/resolv.conf", paths.resolv_conf),
        bind("/etc/hostname", paths.hostname_file),
    ]);
    if let Some(list) = mounts.as_array_mut() {
        list.extend(paths.binds.iter().map(Bind::mount));
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": process.uid, "gid": process.gid, "additionalGids": process.additional_gids},
            "args": process.args,
            "env": process.env,
            "cwd": process.cwd,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "noNewPrivileges": false
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": hostname,
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroup_path,
            "namespaces": namespaces,
            "resources": {
                "devices": [{"allow": false, "access": "rwm"}],
                "memory": {"limit": limits.memory_bytes, "swap": limits.memory_bytes},
                "cpu": {"quota": limits.millicpu * CPU_PERIOD / 1000, "period": CPU_PERIOD},
                "pids": {"limit": limits.pids}
            },
            "maskedPaths": [
                "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
                "/proc/scsi"
            ],
            "readonlyPaths": [
                "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
            ],
            "seccomp": seccomp
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bora_api::InstanceType;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn command_and_args_combine_like_docker() {
        let ep = s(&["/entry"]);
        let cmd = s(&["serve"]);
        assert_eq!(process_args(&ep, &cmd, None, None), s(&["/entry", "serve"]));
        assert_eq!(
            process_args(&ep, &cmd, Some(&s(&["httpd"])), None),
            s(&["httpd"])
        );
        assert_eq!(
            process_args(&ep, &cmd, None, Some(&s(&["-v"]))),
            s(&["/entry", "-v"])
        );
        assert_eq!(
            process_args(&ep, &cmd, Some(&s(&["sh"])), Some(&s(&["-c", "x"]))),
            s(&["sh", "-c", "x"])
        );
    }

    #[test]
    fn service_env_overrides_image_env_and_path_has_a_default() {
        let env = merge_env(
            &s(&["A=1", "B=2"]),
            &[("B".into(), "3".into()), ("C".into(), "x=y".into())],
        );
        assert_eq!(
            env[0],
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        );
        assert_eq!(&env[1..], &s(&["A=1", "B=3", "C=x=y"]));
        let env = merge_env(&s(&["PATH=/bin"]), &[]);
        assert_eq!(env, s(&["PATH=/bin"]));
    }

    #[test]
    fn users_resolve_against_the_images_files() {
        let passwd = "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n";
        let group = "root:x:0:\nstaff:x:50:app\napp:x:1001:\n";
        assert_eq!(resolve_user("", None, None).unwrap(), (0, 0, vec![]));
        assert_eq!(
            resolve_user("app", Some(passwd), Some(group)).unwrap(),
            (1000, 1001, vec![50])
        );
        assert_eq!(
            resolve_user("1000", Some(passwd), Some(group)).unwrap(),
            (1000, 1001, vec![50])
        );
        assert_eq!(
            resolve_user("4242", Some(passwd), None).unwrap(),
            (4242, 4242, vec![])
        );
        assert_eq!(
            resolve_user("app:staff", Some(passwd), Some(group))
                .unwrap()
                .1,
            50
        );
        assert_eq!(resolve_user("0:7", None, None).unwrap(), (0, 7, vec![]));
        assert!(
            resolve_user("ghost", Some(passwd), None)
                .unwrap_err()
                .contains("ghost")
        );
        assert!(
            resolve_user("app:ghosts", Some(passwd), Some(group))
                .unwrap_err()
                .contains("ghosts")
        );
    }

    #[test]
    fn config_carries_limits_and_namespaces() {
        let p = Process {
            args: s(&["httpd"]),
            env: s(&["PATH=/bin"]),
            cwd: "/".into(),
            uid: 0,
            gid: 0,
            additional_gids: vec![],
        };
        let paths = BundlePaths {
            hosts: Path::new("/i/hosts"),
            resolv_conf: Path::new("/i/resolv.conf"),
            hostname_file: Path::new("/i/hostname"),
            netns: Path::new("/run/netns/x"),
            binds: &[Bind {
                destination: "/.bora/envd",
                source: Path::new("/opt/envd"),
                read_only: true,
            }],
        };
        let limits = InstanceType::Small.limits();
        let c = runtime_config(&p, "h", limits, Isolation::Container, "/bora/x", &paths);
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 50_000);
        assert_eq!(
            c["linux"]["resources"]["memory"]["limit"],
            1024 * 1024 * 1024u64
        );
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], 512);
        let ns = c["linux"]["namespaces"].as_array().unwrap();
        assert!(
            ns.iter()
                .any(|n| n["type"] == "network" && n["path"] == "/run/netns/x")
        );
        let mounts = c["mounts"].as_array().unwrap();
        let envd = mounts.last().unwrap();
        assert_eq!(envd["destination"], "/.bora/envd");
        assert_eq!(envd["source"], "/opt/envd");
        assert!(envd["options"].as_array().unwrap().contains(&json!("ro")));
        assert!(mounts.iter().any(|m| m["destination"] == "/etc/hosts"));
        let g = runtime_config(&p, "h", limits, Isolation::Gvisor, "/bora/x", &paths);
        let ns = g["linux"]["namespaces"].as_array().unwrap();
        assert!(!ns.iter().any(|n| n["type"] == "network"));

        // runc containers get the seccomp filter; gVisor has its own kernel.
        let denied = &c["linux"]["seccomp"]["syscalls"][0];
        assert_eq!(denied["action"], "SCMP_ACT_ERRNO");
        let names: Vec<&str> = denied["names"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n.as_str().unwrap())
            .collect();
        for dangerous in [
            "keyctl",
            "bpf",
            "init_module",
            "io_uring_setup",
            "unshare",
            "mount",
        ] {
            assert!(names.contains(&dangerous), "{dangerous} is denied");
        }
        assert_eq!(c["linux"]["seccomp"]["defaultAction"], "SCMP_ACT_ALLOW");
        assert!(g["linux"]["seccomp"].is_null());
    }
}
