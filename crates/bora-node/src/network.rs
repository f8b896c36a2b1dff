//! Instance networking through CNI: each instance gets its own network
//! namespace, attached to the node's bridge by the standard `bridge` plugin
//! with `host-local` addresses (Debian's `containernetworking-plugins`).
//!
//! The router reaches instances by their address on the bridge. Nothing
//! outside the host can: a firewall rule drops new connections forwarded into
//! the bridge from any other interface. Instances reach out through NAT.

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
    /// Linux bridge the instances attach to.
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
            "ipam": {
                "type": "host-local",
                "ranges": [[{"subnet": self.subnet}]],
                "routes": [{"dst": "0.0.0.0/0"}],
                "dataDir": self.ipam_dir,
            }
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
    let netns = netns_path(instance);
    if !netns.exists() {
        run(
            Command::new("ip").args(["netns", "add", &netns_name(instance)]),
            "ip netns add",
        )
        .await?;
    }
    cni(
        config,
        "loopback",
        &config.loopback_conf(),
        "ADD",
        instance,
        &netns,
    )
    .await?;
    let result = cni(
        config,
        "bridge",
        &config.bridge_conf(),
        "ADD",
        instance,
        &netns,
    )
    .await?;
    let address = result["ips"][0]["address"].as_str().unwrap_or_default();
    let ip = address.split('/').next().unwrap_or_default();
    let ip: IpAddr = ip.parse().map_err(|_| NodeError::Network {
        instance: instance.to_string(),
        detail: format!("the bridge plugin returned no usable address: {result}"),
    })?;
    guard_bridge(config).await?;
    Ok(ip)
}

/// Detaches and deletes the instance's namespace. Safe to call again and on
/// half-built networks: every step ignores what is already gone.
pub async fn detach(config: &NetworkConfig, instance: &str) -> Result<(), NodeError> {
    let netns = netns_path(instance);
    // DEL must also run when the namespace is gone, to free the address.
    let del = cni(
        config,
        "bridge",
        &config.bridge_conf(),
        "DEL",
        instance,
        &netns,
    )
    .await;
    if netns.exists() {
        run(
            Command::new("ip").args(["netns", "delete", &netns_name(instance)]),
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
    fn bridge_conf_names_subnet_and_ipam_dir() {
        let c = NetworkConfig::default().bridge_conf();
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["ipam"]["ranges"][0][0]["subnet"], "10.88.0.0/16");
        assert_eq!(c["ipam"]["dataDir"], "/var/lib/cni/networks");
    }
}
