//! Health probes, run from the node against an instance's address.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bora_api::HealthCheckSpec;

/// What to probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    Tcp { port: u16 },
    Http { port: u16, path: String },
}

impl Probe {
    /// The probe a service asks for; services without a health check are
    /// probed by TCP on their first port, and those without ports are healthy
    /// once running.
    pub fn for_service(check: Option<&HealthCheckSpec>, first_port: Option<u16>) -> Option<Probe> {
        match check {
            Some(HealthCheckSpec { http: Some(h), .. }) => Some(Probe::Http {
                port: h.port,
                path: h.path.clone(),
            }),
            Some(HealthCheckSpec { tcp: Some(t), .. }) => Some(Probe::Tcp { port: t.port }),
            _ => first_port.map(|port| Probe::Tcp { port }),
        }
    }
}

/// Runs HTTP probes; holds one client for all of them.
#[derive(Clone)]
pub struct Prober {
    client: reqwest::Client,
}

impl Default for Prober {
    fn default() -> Self {
        Self::new()
    }
}

impl Prober {
    pub fn new() -> Self {
        let client = reqwest::Client::builder()
            .no_proxy()
            .pool_max_idle_per_host(0)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("building an HTTP client with static settings");
        Self { client }
    }

    /// `Ok` when healthy; otherwise what failed, for the instance's reason.
    pub async fn check(&self, ip: IpAddr, probe: &Probe, timeout: Duration) -> Result<(), String> {
        match probe {
            Probe::Tcp { port } => {
                let addr = SocketAddr::new(ip, *port);
                match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                    Ok(Ok(_)) => Ok(()),
                    Ok(Err(e)) => Err(format!("tcp check on port {port} failed: {e}")),
                    Err(_) => Err(format!(
                        "tcp check on port {port} timed out after {timeout:?}"
                    )),
                }
            }
            Probe::Http { port, path } => {
                let host = match ip {
                    IpAddr::V4(v4) => v4.to_string(),
                    IpAddr::V6(v6) => format!("[{v6}]"),
                };
                let url = format!("http://{host}:{port}{path}");
                match self.client.get(&url).timeout(timeout).send().await {
                    Ok(r) if r.status().is_success() || r.status().is_redirection() => Ok(()),
                    Ok(r) => Err(format!(
                        "http check GET {path} on port {port} returned {}",
                        r.status()
                    )),
                    Err(e) if e.is_timeout() => Err(format!(
                        "http check GET {path} on port {port} timed out after {timeout:?}"
                    )),
                    Err(e) => Err(format!(
                        "http check GET {path} on port {port} failed: {}",
                        root_cause(&e)
                    )),
                }
            }
        }
    }
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn http_and_tcp_probes_tell_up_from_down() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut s, _) = listener.accept().await.unwrap();
                let mut buf = [0u8; 1024];
                let n = s.read(&mut buf).await.unwrap_or(0);
                let req = String::from_utf8_lossy(&buf[..n]).to_string();
                let status = if req.starts_with("GET /ok ") {
                    "200 OK"
                } else {
                    "500 Oops"
                };
                let _ = s
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
                        )
                        .as_bytes(),
                    )
                    .await;
            }
        });
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let p = Prober::new();
        let t = Duration::from_secs(2);
        p.check(ip, &Probe::Tcp { port }, t).await.unwrap();
        p.check(
            ip,
            &Probe::Http {
                port,
                path: "/ok".into(),
            },
            t,
        )
        .await
        .unwrap();
        let err = p
            .check(
                ip,
                &Probe::Http {
                    port,
                    path: "/bad".into(),
                },
                t,
            )
            .await
            .unwrap_err();
        assert!(err.contains("500"), "{err}");
        let closed = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let err = p
            .check(ip, &Probe::Tcp { port: closed }, t)
            .await
            .unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
}
