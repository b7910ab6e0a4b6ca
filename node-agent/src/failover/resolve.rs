//! Turns the configured addresses into connection candidates: every socket
//! address each `host:port` resolves to, so a DNS name with several records
//! counts as several replicas.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;

use super::address::{IssuerAddress, IssuerAddresses};

/// Looks up one `host:port`. Injected so tests can give a name several
/// addresses without touching the system resolver.
pub trait Resolve: Send + Sync + 'static {
    fn resolve<'a>(
        &'a self,
        address: &'a IssuerAddress,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>>;
}

/// The system resolver (`getaddrinfo`, through tokio).
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve<'a>(
        &'a self,
        address: &'a IssuerAddress,
    ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
        Box::pin(async move { Ok(tokio::net::lookup_host(address.as_str()).await?.collect()) })
    }
}

/// The candidates of one connection attempt, and the addresses that did not
/// resolve.
#[derive(Debug, Default)]
pub struct Resolved {
    /// Each socket address once, in the order of the configuration and of
    /// the resolver's answers.
    pub candidates: Vec<SocketAddr>,
    pub failures: Vec<(IssuerAddress, io::Error)>,
}

/// Resolves every configured address.
pub async fn resolve_all(addresses: &IssuerAddresses, resolver: &dyn Resolve) -> Resolved {
    let mut resolved = Resolved::default();
    for address in addresses.iter() {
        match resolver.resolve(address).await {
            Ok(found) if found.is_empty() => resolved.failures.push((
                address.clone(),
                io::Error::new(io::ErrorKind::NotFound, "resolves to no address"),
            )),
            Ok(found) => {
                for socket in found {
                    if !resolved.candidates.contains(&socket) {
                        resolved.candidates.push(socket);
                    }
                }
            }
            Err(error) => resolved.failures.push((address.clone(), error)),
        }
    }
    resolved
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::collections::HashMap;

    /// A resolver answering from a table; names not in it fail.
    pub(crate) struct Table(pub HashMap<&'static str, Vec<SocketAddr>>);

    impl Resolve for Table {
        fn resolve<'a>(
            &'a self,
            address: &'a IssuerAddress,
        ) -> Pin<Box<dyn Future<Output = io::Result<Vec<SocketAddr>>> + Send + 'a>> {
            let answer = self.0.get(address.as_str()).cloned().ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, "no such host (test table)")
            });
            Box::pin(async move { answer })
        }
    }

    fn at(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[tokio::test]
    async fn a_name_with_several_records_gives_several_candidates_once_each() {
        let table = Table(HashMap::from([
            (
                "issuer.example:8081",
                vec![at("10.0.0.1:8081"), at("10.0.0.2:8081")],
            ),
            ("10.0.0.2:8081", vec![at("10.0.0.2:8081")]),
            ("10.0.0.3:8081", vec![at("10.0.0.3:8081")]),
            ("empty.example:8081", vec![]),
        ]));
        let addresses =
            "10.0.0.3:8081,issuer.example:8081,10.0.0.2:8081,gone.example:8081,empty.example:8081"
                .parse()
                .unwrap();
        let resolved = resolve_all(&addresses, &table).await;
        assert_eq!(
            resolved.candidates,
            [
                at("10.0.0.3:8081"),
                at("10.0.0.1:8081"),
                at("10.0.0.2:8081")
            ]
        );
        let failed: Vec<&str> = resolved
            .failures
            .iter()
            .map(|(address, _)| address.as_str())
            .collect();
        assert_eq!(failed, ["gone.example:8081", "empty.example:8081"]);
    }

    #[tokio::test]
    async fn the_system_resolver_resolves_ip_literals_and_localhost() {
        let addresses = "127.0.0.1:8081,localhost:8081".parse().unwrap();
        let resolved = resolve_all(&addresses, &SystemResolver).await;
        assert!(resolved.failures.is_empty(), "{:?}", resolved.failures);
        assert_eq!(resolved.candidates.first(), Some(&at("127.0.0.1:8081")));
        assert!(resolved.candidates.iter().all(|a| a.port() == 8081));
    }
}
