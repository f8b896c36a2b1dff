//! How commands name things: `APP/SERVICE` (or just `SERVICE` when one app
//! has a service by that name), and IDs, whole or short.

use std::fmt;
use std::str::FromStr;

use bora_api::{Deployment, Instance, List, Service};

use crate::client::{ApiClient, InstanceFilter};
use crate::error::CliError;

/// A service argument as typed: `hello/web` or `web`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceRef {
    /// `None` when only the service's name was given.
    pub app: Option<String>,
    pub service: String,
}

impl FromStr for ServiceRef {
    type Err = CliError;

    fn from_str(input: &str) -> Result<Self, CliError> {
        let invalid = |reason: &str| CliError::InvalidServiceRef {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let mut parts = input.split('/');
        let (app, service) = match (parts.next(), parts.next(), parts.next()) {
            (Some(service), None, None) => (None, service),
            (Some(app), Some(service), None) => {
                if app.is_empty() {
                    return Err(invalid("the app name before '/' is empty"));
                }
                (Some(app.to_string()), service)
            }
            _ => return Err(invalid("it has more than one '/'")),
        };
        if service.is_empty() {
            return Err(invalid("the service name is empty"));
        }
        Ok(ServiceRef {
            app,
            service: service.to_string(),
        })
    }
}

impl fmt::Display for ServiceRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.app {
            Some(app) => write!(f, "{app}/{}", self.service),
            None => f.write_str(&self.service),
        }
    }
}

/// A service named exactly: its app and its name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceName {
    pub app: String,
    pub service: String,
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.app, self.service)
    }
}

impl ServiceRef {
    /// Finds the app of a bare service name among `services` (all apps'
    /// services); errors name the candidates when several apps match.
    pub fn pick(&self, services: &List<Service>) -> Result<ServiceName, CliError> {
        if let Some(app) = &self.app {
            return Ok(ServiceName {
                app: app.clone(),
                service: self.service.clone(),
            });
        }
        let mut matches: Vec<&Service> = services
            .items
            .iter()
            .filter(|s| s.name == self.service)
            .collect();
        match matches.len() {
            0 => Err(CliError::ServiceNotFound {
                name: self.service.clone(),
            }),
            1 => {
                let s = matches.remove(0);
                Ok(ServiceName {
                    app: s.app.clone(),
                    service: s.name.clone(),
                })
            }
            _ => {
                let mut candidates: Vec<String> = matches
                    .iter()
                    .map(|s| format!("{}/{}", s.app, s.name))
                    .collect();
                candidates.sort();
                Err(CliError::AmbiguousService {
                    name: self.service.clone(),
                    candidates,
                })
            }
        }
    }

    /// Names the service exactly, asking the server which app has it when
    /// only its name was given.
    pub async fn resolve(&self, client: &ApiClient) -> Result<ServiceName, CliError> {
        if self.app.is_some() {
            return self.pick(&List { items: vec![] });
        }
        let services = client.list_services(None).await?;
        self.pick(&services)
    }
}

/// The shortest ID prefix or suffix looked up among all resources.
const MIN_SHORT_ID: usize = 4;

/// Picks the one ID in `ids` that `input` is a prefix or suffix of.
/// `Ok(None)` when none matches.
pub fn match_short_id<'a>(
    kind: &'static str,
    input: &str,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<Option<&'a str>, CliError> {
    if input.len() < MIN_SHORT_ID {
        return Ok(None);
    }
    let mut found: Vec<&str> = ids
        .into_iter()
        .filter(|id| id.starts_with(input) || id.ends_with(input))
        .collect();
    found.sort_unstable();
    found.dedup();
    match found.len() {
        0 => Ok(None),
        1 => Ok(Some(found[0])),
        _ => Err(CliError::AmbiguousId {
            kind,
            input: input.to_string(),
            candidates: found.iter().map(|s| s.to_string()).collect(),
        }),
    }
}

/// Gets a deployment by ID, or by the short ID a table showed.
pub async fn find_deployment(client: &ApiClient, input: &str) -> Result<Deployment, CliError> {
    match client.get_deployment(input).await {
        Err(not_found) if not_found.is_not_found() => {
            let all = client.list_deployments(None).await?;
            match match_short_id("deployment", input, all.items.iter().map(|d| d.id.as_str()))? {
                Some(id) => client.get_deployment(id).await,
                None => Err(not_found),
            }
        }
        other => other,
    }
}

/// Gets an instance (with its history) by ID, or by a short ID.
pub async fn find_instance(client: &ApiClient, input: &str) -> Result<Instance, CliError> {
    match client.get_instance(input).await {
        Err(not_found) if not_found.is_not_found() => {
            let filter = InstanceFilter {
                all: true,
                ..InstanceFilter::default()
            };
            let all = client.list_instances(&filter).await?;
            match match_short_id("instance", input, all.items.iter().map(|i| i.id.as_str()))? {
                Some(id) => client.get_instance(id).await,
                None => Err(not_found),
            }
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use bora_api::ServiceType;
    use chrono::Utc;

    use super::*;

    fn svc(app: &str, name: &str) -> Service {
        Service {
            id: format!("{app}-{name}"),
            app: app.into(),
            name: name.into(),
            kind: ServiceType::Web,
            active_deployment: None,
            latest_deployment: None,
            url: None,
            scaling: None,
            created_at: Utc::now(),
            updated_at: Utc::now(),
        }
    }

    #[test]
    fn parses_service_refs() {
        let r: ServiceRef = "hello/web".parse().unwrap();
        assert_eq!(
            (r.app.as_deref(), r.service.as_str()),
            (Some("hello"), "web")
        );
        assert_eq!(r.to_string(), "hello/web");
        let r: ServiceRef = "web".parse().unwrap();
        assert_eq!((r.app, r.service.as_str()), (None, "web"));
        for (bad, why) in [
            ("", "the service name is empty"),
            ("hello/", "the service name is empty"),
            ("/web", "the app name before '/' is empty"),
            ("a/b/c", "it has more than one '/'"),
        ] {
            let err = bad.parse::<ServiceRef>().unwrap_err();
            assert_eq!(
                err.to_string(),
                format!("invalid service {bad:?}: {why}; expected APP/SERVICE or SERVICE")
            );
        }
    }

    #[test]
    fn bare_names_resolve_when_unique() {
        let services = List {
            items: vec![
                svc("hello", "web"),
                svc("hello", "worker"),
                svc("shop", "web"),
                svc("shop", "db"),
            ],
        };
        let r: ServiceRef = "worker".parse().unwrap();
        assert_eq!(r.pick(&services).unwrap().to_string(), "hello/worker");
        let r: ServiceRef = "shop/web".parse().unwrap();
        assert_eq!(r.pick(&services).unwrap().to_string(), "shop/web");

        let err = "web"
            .parse::<ServiceRef>()
            .unwrap()
            .pick(&services)
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "service name \"web\" is ambiguous: hello/web, shop/web; name one as APP/SERVICE"
        );
        let err = "api"
            .parse::<ServiceRef>()
            .unwrap()
            .pick(&services)
            .unwrap_err();
        assert!(matches!(err, CliError::ServiceNotFound { .. }), "{err}");
    }

    #[test]
    fn short_ids_match_prefix_or_suffix() {
        let ids = [
            "4f1c2a9be3d04c6f9a7b1e2d3c4b5a69",
            "4f1c2a9b00004c6f9a7b1e2d3c4b0002",
        ];
        let m = |input| match_short_id("instance", input, ids.iter().copied());
        assert_eq!(m("3c4b5a69").unwrap(), Some(ids[0]));
        assert_eq!(m("4f1c2a9b0000").unwrap(), Some(ids[1]));
        assert_eq!(m("ffff").unwrap(), None);
        assert_eq!(m("01").unwrap(), None, "too short to look up");
        let err = m("4f1c2a9b").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("instance ID \"4f1c2a9b\" is ambiguous: it matches 4f1c2a9b0000"),
            "{err}"
        );
    }
}
