//! The sandboxes' firewall: iptables rules in chains of Bora's own.
//!
//! A sandbox may open no connection but those its allow-list names, and
//! never one to the host, another sandbox, a service instance, link-local
//! addresses (cloud metadata) or loopback, whatever its allow-list says.
//! Connections the host opens to a sandbox (the router reaching envd) work,
//! and their replies pass.
//!
//! ```text
//! filter INPUT        -s <sandboxes> -j BORA-SANDBOX-IN
//! BORA-SANDBOX-IN     replies (ESTABLISHED, RELATED) → ACCEPT; the rest → DROP
//! filter FORWARD      -s <sandboxes> -j BORA-SANDBOX-FWD
//!                     -d <sandboxes> -j BORA-SANDBOX-FWD
//! BORA-SANDBOX-FWD    replies → ACCEPT
//!                     not from a sandbox (nothing opens connections into one) → DROP
//!                     rewritten by a port forward (DNAT: aimed at the host) → DROP
//!                     to a sandbox, a service, 169.254/16, 127/8, multicast… → DROP
//!                     → BORA-SANDBOX-ALLOW, then DROP
//! BORA-SANDBOX-ALLOW  -i <veth> -s <ip> -j BORA-SB-<hash>   (one per sandbox)
//! BORA-SB-<hash>      -d <cidr> -j ACCEPT                   (its allow-list)
//! nat POSTROUTING     -s <sandboxes> -j BORA-SANDBOX-NAT
//! BORA-SANDBOX-NAT    to a sandbox → RETURN; the rest → MASQUERADE
//! ```
//!
//! Only allowed traffic reaches POSTROUTING (filtering happens first), so the
//! masquerade applies to exactly what the allow-lists let out. Sandboxes
//! cannot spoof their way into another sandbox's allow-list: the host's end
//! of each link has strict reverse-path filtering ([`crate::network`]), and
//! the per-sandbox jump names the interface too.
//!
//! The host-wide chains are refilled atomically with `iptables-restore
//! --noflush` (a declared chain is flushed and refilled in one commit, so
//! there is no moment without the rules) and the jumps into them are added
//! once; both are idempotent, so a restarted node just does it again. A
//! sandbox's chain and jump are added in one commit and removed in one.
//! The rule text is built by pure functions, tested without root.

use std::net::Ipv4Addr;
use std::process::Stdio;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::NodeError;

pub const IN_CHAIN: &str = "BORA-SANDBOX-IN";
pub const FWD_CHAIN: &str = "BORA-SANDBOX-FWD";
pub const ALLOW_CHAIN: &str = "BORA-SANDBOX-ALLOW";
pub const NAT_CHAIN: &str = "BORA-SANDBOX-NAT";

/// Destinations no allow-list opens, besides the sandbox range itself and
/// the services' range: link-local (cloud metadata at 169.254.169.254),
/// loopback, "this network", multicast and broadcast.
pub const NEVER: &[&str] = &[
    "169.254.0.0/16",
    "127.0.0.0/8",
    "0.0.0.0/8",
    "224.0.0.0/4",
    "255.255.255.255/32",
];

/// An IPv4 network, `a.b.c.d/len`, with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub prefix: u8,
}

impl std::fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

/// What one allow-list entry means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllowEntry {
    V4(Ipv4Net),
    /// Sandboxes have no IPv6, so an IPv6 entry opens nothing.
    V6,
}

/// Parses an allow-list entry: an address (`1.2.3.4`, `2001:db8::1`) or a
/// network (`10.0.0.0/8`, `2001:db8::/32`).
pub fn parse_allow(entry: &str) -> Result<AllowEntry, String> {
    let bad = |why: &str| {
        format!("allow-list entry {entry:?} {why}: write an address or a CIDR like 203.0.113.0/24")
    };
    let (addr, prefix) = match entry.trim().split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (entry.trim(), None),
    };
    if addr.parse::<std::net::Ipv6Addr>().is_ok() {
        return match prefix.map(str::parse::<u8>) {
            None | Some(Ok(0..=128)) => Ok(AllowEntry::V6),
            Some(_) => Err(bad("has an invalid prefix length")),
        };
    }
    let addr: Ipv4Addr = addr.parse().map_err(|_| bad("is not an IP address"))?;
    let prefix = match prefix {
        None => 32,
        Some(p) => match p.parse::<u8>() {
            Ok(p) if p <= 32 => p,
            _ => return Err(bad("has an invalid prefix length")),
        },
    };
    let mask = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    Ok(AllowEntry::V4(Ipv4Net {
        addr: Ipv4Addr::from(u32::from(addr) & mask),
        prefix,
    }))
}

/// The IPv4 networks an allow-list opens (IPv6 entries open nothing).
pub fn parse_allow_list(list: &[String]) -> Result<Vec<Ipv4Net>, String> {
    let mut out = Vec::new();
    for entry in list {
        if let AllowEntry::V4(net) = parse_allow(entry)?
            && !out.contains(&net)
        {
            out.push(net);
        }
    }
    Ok(out)
}

/// The name of sandbox `id`'s chain: short (iptables allows 28 characters)
/// and stable, from a hash of the id.
pub fn sandbox_chain(id: &str) -> String {
    // FNV-1a, 64 bits: stable across builds, unlike std's hasher.
    let hash = id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("BORA-SB-{hash:016x}")
}

/// The host-wide chains' contents, for `iptables-restore --noflush`.
/// `blocked` are the other ranges no sandbox may reach (the services').
pub fn host_rules(sandboxes: &str, blocked: &[&str]) -> String {
    let mut filter = vec![
        format!(":{IN_CHAIN} - [0:0]"),
        format!(":{FWD_CHAIN} - [0:0]"),
        format!("-A {IN_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!(
            "-A {IN_CHAIN} -m comment --comment \"bora: sandboxes never open connections to the host\" -j DROP"
        ),
        format!("-A {FWD_CHAIN} -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"),
        format!(
            "-A {FWD_CHAIN} ! -s {sandboxes} -m comment --comment \"bora: nothing opens connections into sandboxes but the host\" -j DROP"
        ),
        format!(
            "-A {FWD_CHAIN} -m conntrack --ctstate DNAT -m comment --comment \"bora: port forwards lead to the host\" -j DROP"
        ),
        format!("-A {FWD_CHAIN} -d {sandboxes} -j DROP"),
    ];
    for dst in blocked.iter().chain(NEVER) {
        filter.push(format!("-A {FWD_CHAIN} -d {dst} -j DROP"));
    }
    filter.push(format!("-A {FWD_CHAIN} -j {ALLOW_CHAIN}"));
    filter.push(format!(
        "-A {FWD_CHAIN} -m comment --comment \"bora: sandboxes reach only their allow-list\" -j DROP"
    ));
    let nat = [
        format!(":{NAT_CHAIN} - [0:0]"),
        format!("-A {NAT_CHAIN} -d {sandboxes} -j RETURN"),
        format!("-A {NAT_CHAIN} -j MASQUERADE"),
    ];
    format!(
        "*filter\n{}\nCOMMIT\n*nat\n{}\nCOMMIT\n",
        filter.join("\n"),
        nat.join("\n")
    )
}

/// The jumps into Bora's chains: (table, chain, rule).
pub fn host_jumps(sandboxes: &str) -> Vec<(&'static str, &'static str, Vec<String>)> {
    let rule = |dir: &str, target: &str| {
        [dir, sandboxes, "-j", target]
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
    };
    vec![
        ("filter", "INPUT", rule("-s", IN_CHAIN)),
        ("filter", "FORWARD", rule("-s", FWD_CHAIN)),
        ("filter", "FORWARD", rule("-d", FWD_CHAIN)),
        ("nat", "POSTROUTING", rule("-s", NAT_CHAIN)),
    ]
}

/// Sandbox `id`'s chain and the jump into it, for `iptables-restore
/// --noflush`: traffic from `ip` arriving on `host_if` may go to `allow`.
pub fn sandbox_rules(id: &str, host_if: &str, ip: Ipv4Addr, allow: &[Ipv4Net]) -> String {
    let chain = sandbox_chain(id);
    let mut lines = vec![format!(":{chain} - [0:0]")];
    lines.extend(
        allow
            .iter()
            .map(|net| format!("-A {chain} -d {net} -j ACCEPT")),
    );
    lines.push(format!(
        "-A {ALLOW_CHAIN} -i {host_if} -s {ip}/32 -m comment --comment \"bora sandbox {id}\" -j {chain}"
    ));
    format!("*filter\n{}\nCOMMIT\n", lines.join("\n"))
}

/// What removes sandbox `id`'s rules, given the filter table as
/// `iptables -S` lists it; `None` if it has none.
pub fn sandbox_removal(id: &str, listing: &str) -> Option<String> {
    let chain = sandbox_chain(id);
    let jump = format!(" -j {chain}");
    let mut lines: Vec<String> = listing
        .lines()
        .filter(|l| l.starts_with(&format!("-A {ALLOW_CHAIN} ")) && l.ends_with(&jump))
        .map(|l| format!("-D{}", &l[2..]))
        .collect();
    if listing.lines().any(|l| l == format!("-N {chain}")) {
        lines.push(format!("-F {chain}"));
        lines.push(format!("-X {chain}"));
    }
    (!lines.is_empty()).then(|| format!("*filter\n{}\nCOMMIT\n", lines.join("\n")))
}

async fn output(cmd: &mut Command, what: &str) -> Result<std::process::Output, NodeError> {
    cmd.stdin(Stdio::null())
        .output()
        .await
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => NodeError::MissingProgram {
                program: "iptables".into(),
                path: "iptables".into(),
                package: "iptables",
            },
            _ => NodeError::Command {
                command: what.to_string(),
                detail: e.to_string(),
            },
        })
}

async fn iptables(args: &[&str]) -> Result<std::process::Output, NodeError> {
    let what = format!("iptables {}", args.join(" "));
    output(Command::new("iptables").arg("-w").args(args), &what).await
}

async fn restore(rules: &str) -> Result<(), NodeError> {
    let failed = |detail: String| NodeError::Command {
        command: "iptables-restore --noflush".into(),
        detail,
    };
    let mut child = Command::new("iptables-restore")
        .args(["-w", "5", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| failed(e.to_string()))?;
    let mut stdin = child.stdin.take().expect("piped stdin");
    stdin
        .write_all(rules.as_bytes())
        .await
        .map_err(|e| failed(e.to_string()))?;
    drop(stdin);
    let out = child
        .wait_with_output()
        .await
        .map_err(|e| failed(e.to_string()))?;
    if !out.status.success() {
        return Err(failed(format!(
            "{} (rules: {})",
            String::from_utf8_lossy(&out.stderr).trim(),
            rules.replace('\n', "; ")
        )));
    }
    Ok(())
}

/// Holds an exclusive lock on Bora's firewall changes across processes
/// (several nodes' tests, a node and its restarted self), so that checking
/// for a rule and adding it is not raced into a duplicate.
struct FirewallLock(#[allow(dead_code)] nix::fcntl::Flock<std::fs::File>);

async fn lock() -> Result<FirewallLock, NodeError> {
    let path = std::path::Path::new("/run/bora-firewall.lock");
    tokio::task::spawn_blocking(move || {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| NodeError::io(path, e))?;
        nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive)
            .map(FirewallLock)
            .map_err(|(_, e)| NodeError::io(path, e.into()))
    })
    .await
    .map_err(|e| NodeError::Command {
        command: "locking /run/bora-firewall.lock".into(),
        detail: e.to_string(),
    })?
}

/// Puts the host-wide chains and the jumps into them in place. Idempotent.
pub async fn ensure_host(sandboxes: &str, blocked: &[&str]) -> Result<(), NodeError> {
    let _lock = lock().await?;
    // The allow chain holds the sandboxes' jumps: created, never flushed.
    let listing = iptables(&["-S", ALLOW_CHAIN]).await?;
    if !listing.status.success() {
        let out = iptables(&["-N", ALLOW_CHAIN]).await?;
        if !out.status.success() {
            return Err(NodeError::Command {
                command: format!("iptables -N {ALLOW_CHAIN}"),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    restore(&host_rules(sandboxes, blocked)).await?;
    for (table, chain, rule) in host_jumps(sandboxes) {
        let rule: Vec<&str> = rule.iter().map(String::as_str).collect();
        let check = [&["-t", table, "-C", chain][..], &rule].concat();
        if iptables(&check).await?.status.success() {
            continue;
        }
        let insert = [&["-t", table, "-I", chain, "1"][..], &rule].concat();
        let out = iptables(&insert).await?;
        if !out.status.success() {
            return Err(NodeError::Command {
                command: format!("iptables {}", insert.join(" ")),
                detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
    }
    Ok(())
}

/// Adds sandbox `id`'s allow-list (replacing any earlier one).
pub async fn add_sandbox(
    id: &str,
    host_if: &str,
    ip: Ipv4Addr,
    allow: &[Ipv4Net],
) -> Result<(), NodeError> {
    remove_sandbox(id).await?;
    let _lock = lock().await?;
    restore(&sandbox_rules(id, host_if, ip, allow)).await
}

/// Removes sandbox `id`'s rules. Idempotent.
pub async fn remove_sandbox(id: &str) -> Result<(), NodeError> {
    let _lock = lock().await?;
    let listing = iptables(&["-S"]).await?;
    if !listing.status.success() {
        return Err(NodeError::Command {
            command: "iptables -S".into(),
            detail: String::from_utf8_lossy(&listing.stderr).trim().to_string(),
        });
    }
    match sandbox_removal(id, &String::from_utf8_lossy(&listing.stdout)) {
        Some(rules) => restore(&rules).await,
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        match parse_allow(s).unwrap() {
            AllowEntry::V4(n) => n,
            AllowEntry::V6 => panic!("{s} is IPv6"),
        }
    }

    #[test]
    fn allow_entries_parse_and_normalise() {
        assert_eq!(net("10.1.2.3/8").to_string(), "10.0.0.0/8");
        assert_eq!(net("203.0.113.7").to_string(), "203.0.113.7/32");
        assert_eq!(net("0.0.0.0/0").to_string(), "0.0.0.0/0");
        assert_eq!(net(" 192.0.2.1/32 ").to_string(), "192.0.2.1/32");
        assert_eq!(parse_allow("2001:db8::/32").unwrap(), AllowEntry::V6);
        for bad in [
            "",
            "example.com",
            "10.0.0.0/33",
            "10.0.0.0/x",
            "1.2.3/24",
            "::/129",
        ] {
            let err = parse_allow(bad).unwrap_err();
            assert!(err.contains("allow-list entry"), "{bad}: {err}");
        }
        let list =
            parse_allow_list(&["10.0.0.1/8".into(), "10.0.0.0/8".into(), "::1".into()]).unwrap();
        assert_eq!(list, vec![net("10.0.0.0/8")]);
    }

    #[test]
    fn chain_names_are_short_stable_and_distinct() {
        let a = sandbox_chain("sbx-a");
        assert_eq!(a, sandbox_chain("sbx-a"));
        assert_ne!(a, sandbox_chain("sbx-b"));
        assert!(a.len() <= 28, "{a}");
        assert!(sandbox_chain(&"x".repeat(200)).len() <= 28);
    }

    #[test]
    fn host_rules_drop_everything_but_replies_and_allow_lists() {
        let rules = host_rules("10.89.0.0/16", &["10.88.0.0/16"]);
        let filter: Vec<&str> = rules
            .split("*nat")
            .next()
            .unwrap()
            .lines()
            .filter(|l| l.starts_with("-A "))
            .collect();
        // INPUT: replies only.
        assert!(filter[0].contains(IN_CHAIN) && filter[0].ends_with("ESTABLISHED -j ACCEPT"));
        assert!(
            filter[1].starts_with(&format!("-A {IN_CHAIN} ")) && filter[1].ends_with("-j DROP")
        );
        let fwd: Vec<&str> = filter
            .iter()
            .copied()
            .filter(|l| l.starts_with(&format!("-A {FWD_CHAIN} ")))
            .collect();
        assert!(fwd[0].ends_with("RELATED,ESTABLISHED -j ACCEPT"));
        assert!(fwd[1].contains("! -s 10.89.0.0/16") && fwd[1].ends_with("-j DROP"));
        assert!(fwd[2].contains("--ctstate DNAT") && fwd[2].ends_with("-j DROP"));
        // Every forbidden range is dropped before the allow-lists are asked.
        let allow_at = fwd
            .iter()
            .position(|l| l.ends_with(&format!("-j {ALLOW_CHAIN}")))
            .unwrap();
        for dst in [
            "10.89.0.0/16",
            "10.88.0.0/16",
            "169.254.0.0/16",
            "127.0.0.0/8",
        ] {
            let at = fwd
                .iter()
                .position(|l| l.contains(&format!("-d {dst} -j DROP")))
                .unwrap_or_else(|| panic!("{dst} is dropped"));
            assert!(at < allow_at, "{dst} is dropped before the allow-lists");
        }
        assert!(fwd.last().unwrap().ends_with("-j DROP"));
        assert_eq!(allow_at, fwd.len() - 2);
        // Only traffic leaving the sandbox range is masqueraded.
        assert!(rules.contains(&format!("-A {NAT_CHAIN} -d 10.89.0.0/16 -j RETURN")));
        assert!(rules.contains(&format!("-A {NAT_CHAIN} -j MASQUERADE")));
        assert_eq!(rules.matches("COMMIT").count(), 2);
        assert!(
            !rules.contains(&format!(":{ALLOW_CHAIN}")),
            "the allow chain is never flushed"
        );
    }

    #[test]
    fn jumps_catch_traffic_from_and_to_sandboxes() {
        let jumps = host_jumps("10.89.0.0/16");
        assert!(jumps.contains(&(
            "filter",
            "INPUT",
            vec![
                "-s".into(),
                "10.89.0.0/16".into(),
                "-j".into(),
                IN_CHAIN.into()
            ]
        )));
        assert!(
            jumps
                .iter()
                .any(|(t, c, r)| *t == "filter" && *c == "FORWARD" && r[0] == "-d")
        );
        assert!(
            jumps
                .iter()
                .any(|(t, c, _)| *t == "nat" && *c == "POSTROUTING")
        );
    }

    #[test]
    fn a_sandbox_chain_accepts_its_allow_list_only() {
        let rules = sandbox_rules(
            "sb1",
            "veth1234",
            Ipv4Addr::new(10, 89, 0, 5),
            &[net("203.0.113.0/24"), net("198.51.100.1")],
        );
        let chain = sandbox_chain("sb1");
        assert_eq!(
            rules,
            format!(
                "*filter\n:{chain} - [0:0]\n-A {chain} -d 203.0.113.0/24 -j ACCEPT\n-A {chain} -d 198.51.100.1/32 -j ACCEPT\n-A {ALLOW_CHAIN} -i veth1234 -s 10.89.0.5/32 -m comment --comment \"bora sandbox sb1\" -j {chain}\nCOMMIT\n"
            )
        );
        // No allow-list: the chain is empty, so everything falls to DROP.
        let none = sandbox_rules("sb1", "veth1234", Ipv4Addr::new(10, 89, 0, 5), &[]);
        assert!(!none.contains("ACCEPT"));
    }

    #[test]
    fn removal_finds_the_jump_and_the_chain() {
        let chain = sandbox_chain("sb1");
        let other = sandbox_chain("sb2");
        let listing = format!(
            "-P INPUT ACCEPT\n-N {ALLOW_CHAIN}\n-N {chain}\n-N {other}\n\
             -A {ALLOW_CHAIN} -i veth1 -s 10.89.0.5/32 -m comment --comment \"bora sandbox sb1\" -j {chain}\n\
             -A {ALLOW_CHAIN} -i veth2 -s 10.89.0.6/32 -m comment --comment \"bora sandbox sb2\" -j {other}\n\
             -A {chain} -d 1.2.3.4/32 -j ACCEPT\n"
        );
        assert_eq!(
            sandbox_removal("sb1", &listing).unwrap(),
            format!(
                "*filter\n-D {ALLOW_CHAIN} -i veth1 -s 10.89.0.5/32 -m comment --comment \"bora sandbox sb1\" -j {chain}\n-F {chain}\n-X {chain}\nCOMMIT\n"
            )
        );
        assert_eq!(sandbox_removal("sb3", &listing), None);
    }
}
