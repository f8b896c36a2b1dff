//! Instance networking through CNI: each instance gets its own network
//! namespace, attached to the node's bridge by the standard `bridge` plugin
//! with `host-local` addresses (Debian's `containernetworking-plugins`).
//!
//! The router reaches instances by their address on the bridge. Nothing
//! outside the host can: a firewall rule drops new connections forwarded into
//! the bridge from any other interface. Instances reach out through NAT.
//!
//! Sandboxes get a network of their own ([`NetworkConfig::sandbox`]): each
//! namespace is attached point-to-point (the CNI `ptp` plugin), so every
//! packet a sandbox sends is routed by the host, where [`crate::firewall`]
//! filters it; on a shared bridge sandboxes would reach each other at L2.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::NodeError;

/// The node's instance network.
#[derive(Debug, Clone)]
pub struct NetworkConfig {
    /// CNI network name; also the name of host-local's allocation directory.
    pub name: String,
    /// Linux bridge the instances attach to (unused by the point-to-point
    /// sandbox network).
    pub bridge: String,
    /// Instance addresses come from this range.
    pub subnet: String,
    /// Where the CNI plugin binaries are.
    pub cni_bin_dir: PathBuf,
    /// Where host-local records which addresses are taken.
    pub ipam_dir: PathBuf,
}

impl Default for NetworkConfig {
    fn default() -> Self {
        Self {
            name: "bora".into(),
            bridge: "bora0".into(),
            subnet: "10.88.0.0/16".into(),
            cni_bin_dir: "/usr/lib/cni".into(),
            ipam_dir: "/var/lib/cni/networks".into(),
        }
    }
}

impl NetworkConfig {
    /// The sandboxes' network: its own range, apart from the services'.
    pub fn sandbox() -> Self {
        Self {
            name: "bora-sandbox".into(),
            bridge: String::new(),
            subnet: "10.89.0.0/16".into(),
            ..Self::default()
        }
    }

    /// The `ptp` plugin's configuration: a veth pair per sandbox, routed by
    /// the host. No masquerading here: [`crate::firewall`] decides what
    /// leaves, and masquerades only that.
    pub fn ptp_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "type": "ptp",
            "ipMasq": false,
            "ipam": self.ipam(),
        })
    }

    fn ipam(&self) -> Value {
        json!({
            "type": "host-local",
            "ranges": [[{"subnet": self.subnet}]],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": self.ipam_dir,
        })
    }

    /// The `bridge` plugin's configuration.
    pub fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.0.0",
            "name": self.name,
            "type": "bridge",
            "bridge": self.bridge,
            "isGateway": true,
            "ipMasq": true,
            "hairpinMode": true,
            "ipam": self.ipam(),
        })
    }

    fn loopback_conf(&self) -> Value {
        json!({"cniVersion": "1.0.0", "name": format!("{}-lo", self.name), "type": "loopback"})
    }
}

/// The path of an instance's network namespace.
pub fn netns_path(instance: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(netns_name(instance))
}

fn netns_name(instance: &str) -> String {
    format!("bora-{}", &instance[..instance.len().min(20)])
}

/// The path of a sandbox's network namespace (never an instance's: the
/// prefix differs, and the whole id is kept).
pub fn sandbox_netns_path(sandbox: &str) -> PathBuf {
    PathBuf::from("/run/netns").join(sandbox_netns_name(sandbox))
}

fn sandbox_netns_name(sandbox: &str) -> String {
    format!("bora-sb-{sandbox}")
}

async fn run(cmd: &mut Command, what: &str) -> Result<String, NodeError> {
    let out = cmd.output().await.map_err(|e| NodeError::Command {
        command: what.to_string(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        return Err(NodeError::Command {
            command: what.to_string(),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

async fn cni(
    config: &NetworkConfig,
    plugin: &str,
    conf: &Value,
    command: &str,
    instance: &str,
    netns: &Path,
) -> Result<Value, NodeError> {
    let bin = config.cni_bin_dir.join(plugin);
    if !bin.exists() {
        return Err(NodeError::MissingProgram {
            program: format!("CNI plugin {plugin}"),
            path: bin.display().to_string(),
            package: "containernetworking-plugins",
        });
    }
    let mut child = Command::new(&bin)
        .env_clear()
        .env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", instance)
        .env("CNI_NETNS", netns)
        .env(
            "CNI_IFNAME",
            if plugin == "loopback" { "lo" } else { "eth0" },
        )
        .env("CNI_PATH", &config.cni_bin_dir)
        .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| NodeError::io(&bin, e))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(conf.to_string().as_bytes())
        .await
        .map_err(|e| NodeError::io(&bin, e))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| NodeError::io(&bin, e))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // CNI plugins report errors as JSON on stdout.
        let detail = serde_json::from_str::<Value>(&stdout)
            .ok()
            .and_then(|v| {
                let msg = v["msg"].as_str()?.to_string();
                Some(match v["details"].as_str() {
                    Some(d) if !d.is_empty() => format!("{msg}: {d}"),
                    _ => msg,
                })
            })
            .unwrap_or_else(|| {
                format!(
                    "{}{}",
                    stdout.trim(),
                    String::from_utf8_lossy(&out.stderr).trim()
                )
            });
        return Err(NodeError::Network {
            instance: instance.to_string(),
            detail: format!("{plugin} {command}: {detail}"),
        });
    }
    if stdout.trim().is_empty() {
        return Ok(Value::Null);
    }
    serde_json::from_str(&stdout).map_err(|e| NodeError::Network {
        instance: instance.to_string(),
        detail: format!("{plugin} {command} printed an unreadable result: {e}"),
    })
}

/// Creates the instance's namespace and attaches it; returns its address.
pub async fn attach(config: &NetworkConfig, instance: &str) -> Result<IpAddr, NodeError> {
    let attached = attach_netns(
        config,
        &config.bridge_conf(),
        &netns_name(instance),
        instance,
    )
    .await?;
    guard_bridge(config).await?;
    Ok(attached.ip)
}

/// Detaches and deletes the instance's namespace. Safe to call again and on
/// half-built networks: every step ignores what is already gone.
pub async fn detach(config: &NetworkConfig, instance: &str) -> Result<(), NodeError> {
    detach_netns(
        config,
        &config.bridge_conf(),
        &netns_name(instance),
        instance,
    )
    .await
}

/// A namespace attached by a CNI plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub ip: IpAddr,
    /// The host's end of the link (`ptp`'s veth), when the plugin made one.
    pub host_interface: Option<String>,
}

/// Creates a sandbox's namespace, with IPv6 off (sandboxes get IPv4 only:
/// an IPv6 link-local address would reach the host around the IPv4
/// firewall), and attaches it point-to-point. The host's end of the link
/// gets strict reverse-path filtering, so the sandbox cannot send with
/// another address than its own, and no IPv6 either.
pub async fn attach_sandbox(
    config: &NetworkConfig,
    sandbox: &str,
) -> Result<Attachment, NodeError> {
    let name = sandbox_netns_name(sandbox);
    create_netns(&name).await?;
    let path = sandbox_netns_path(sandbox);
    let in_netns = path.clone();
    let ipv6_off = tokio::task::spawn_blocking(move || ipv6_off_inside(&in_netns))
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(e)));
    ipv6_off.map_err(|e| NodeError::Network {
        instance: sandbox.to_string(),
        detail: format!("turning IPv6 off in {}: {e}", path.display()),
    })?;
    let attached = attach_netns(config, &config.ptp_conf(), &name, sandbox).await?;
    let Some(host_if) = &attached.host_interface else {
        return Err(NodeError::Network {
            instance: sandbox.to_string(),
            detail: "the ptp plugin reported no host interface".into(),
        });
    };
    for (key, value) in [
        ("ipv6/conf/{}/disable_ipv6", "1"),
        ("ipv4/conf/{}/rp_filter", "1"),
    ] {
        let path = PathBuf::from("/proc/sys/net").join(key.replace("{}", host_if));
        std::fs::write(&path, value).map_err(|e| NodeError::io(&path, e))?;
    }
    Ok(attached)
}

/// Detaches and deletes a sandbox's namespace, freeing its address. Safe to
/// call again and on half-built networks.
pub async fn detach_sandbox(config: &NetworkConfig, sandbox: &str) -> Result<(), NodeError> {
    detach_netns(
        config,
        &config.ptp_conf(),
        &sandbox_netns_name(sandbox),
        sandbox,
    )
    .await
}

/// Writes the namespace's IPv6 switches from a thread of our own, which
/// enters the namespace and ends (a pool thread must not change namespace).
fn ipv6_off_inside(netns: &Path) -> std::io::Result<()> {
    let ns = std::fs::File::open(netns)?;
    std::thread::scope(|scope| {
        scope
            .spawn(|| {
                nix::sched::setns(&ns, nix::sched::CloneFlags::CLONE_NEWNET)
                    .map_err(std::io::Error::from)?;
                for which in ["all", "default", "lo"] {
                    std::fs::write(format!("/proc/sys/net/ipv6/conf/{which}/disable_ipv6"), "1")?;
                }
                Ok(())
            })
            .join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the namespace thread panicked")))
    })
}

async fn create_netns(name: &str) -> Result<(), NodeError> {
    if !Path::new("/run/netns").join(name).exists() {
        run(
            Command::new("ip").args(["netns", "add", name]),
            "ip netns add",
        )
        .await?;
    }
    Ok(())
}

/// Creates namespace `name` if needed and attaches it with the plugin that
/// `conf` names (plus loopback).
async fn attach_netns(
    config: &NetworkConfig,
    conf: &Value,
    name: &str,
    id: &str,
) -> Result<Attachment, NodeError> {
    create_netns(name).await?;
    let netns = Path::new("/run/netns").join(name);
    cni(
        config,
        "loopback",
        &config.loopback_conf(),
        "ADD",
        id,
        &netns,
    )
    .await?;
    let plugin = conf["type"].as_str().unwrap_or_default();
    let result = cni(config, plugin, conf, "ADD", id, &netns).await?;
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    let ip = address.split('/').next().unwrap_or_default();
    let ip: IpAddr = ip.parse().map_err(|_| NodeError::Network {
        instance: id.to_string(),
        detail: format!("the {plugin} plugin returned no usable address: {result}"),
    })?;
    let host_interface = result["interfaces"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|i| i.get("sandbox").is_none())
        .and_then(|i| i["name"].as_str())
        .map(str::to_string);
    Ok(Attachment { ip, host_interface })
}

async fn detach_netns(
    config: &NetworkConfig,
    conf: &Value,
    name: &str,
    id: &str,
) -> Result<(), NodeError> {
    let netns = Path::new("/run/netns").join(name);
    let plugin = conf["type"].as_str().unwrap_or_default();
    // DEL must also run when the namespace is gone, to free the address.
    let del = cni(config, plugin, conf, "DEL", id, &netns).await;
    if netns.exists() {
        run(
            Command::new("ip").args(["netns", "delete", name]),
            "ip netns delete",
        )
        .await?;
    }
    del.map(|_| ())
}

/// Drops connections from outside the host into the bridge. Idempotent.
async fn guard_bridge(config: &NetworkConfig) -> Result<(), NodeError> {
    let rule = [
        "FORWARD",
        "-o",
        &config.bridge,
        "!",
        "-i",
        &config.bridge,
        "-m",
        "conntrack",
        "!",
        "--ctstate",
        "RELATED,ESTABLISHED",
        "-m",
        "comment",
        "--comment",
        "bora: instances are reached only through the router",
        "-j",
        "DROP",
    ];
    // -w: wait for the xtables lock rather than fail when another program
    // (or another Bora) changes the firewall at the same moment.
    let exists = Command::new("iptables")
        .args(["-w", "-C"])
        .args(rule)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .await
        .map(|s| s.success())
        .unwrap_or(false);
    if !exists {
        run(
            Command::new("iptables").args(["-w", "-I"]).args(rule),
            "iptables -I FORWARD",
        )
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netns_names_fit_and_are_stable() {
        let id = "0123456789abcdef0123456789abcdef";
        assert_eq!(
            netns_path(id),
            PathBuf::from("/run/netns/bora-0123456789abcdef0123")
        );
        assert_eq!(netns_name("abc"), "bora-abc");
    }

    #[test]
    fn sandboxes_have_their_own_namespaces_and_range() {
        assert_eq!(
            sandbox_netns_path("0123456789abcdef0123456789"),
            PathBuf::from("/run/netns/bora-sb-0123456789abcdef0123456789")
        );
        let c = NetworkConfig::sandbox().ptp_conf();
        assert_eq!(c["type"], "ptp");
        assert_eq!(c["ipMasq"], false);
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.89.0.0/16");
        assert_ne!(c["name"], NetworkConfig::default().bridge_conf()["name"]);
    }

    #[test]
    fn bridge_conf_names_subnet_and_ipam_dir() {
        let c = NetworkConfig::default().bridge_conf();
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
        assert_eq!(c["ipam"]["dataDir"], "/var/lib/cni/networks");
    }
}
