//! The TCP proxies between a worker and the broker and database, which faults cut.

use std::net::SocketAddr;

use crate::proxy::CuttableProxy;

/// The proxies between one worker and the broker (one per node) and the database.
pub struct Links {
    pub broker: Vec<CuttableProxy>,
    pub database: CuttableProxy,
}

/// The database server's address in a `postgres://user@host:port/name` URL.
pub async fn database_addr(url: &str) -> SocketAddr {
    let host = authority(url).1;
    tokio::net::lookup_host(host)
        .await
        .ok()
        .and_then(|mut addrs| addrs.next())
        .unwrap_or_else(|| panic!("cannot resolve the database server {host}"))
}

/// `url` with its host and port replaced by `proxy`.
pub fn through(url: &str, proxy: SocketAddr) -> String {
    let (start, host) = authority(url);
    format!("{start}{proxy}{}", &url[start.len() + host.len()..])
}

/// (everything before the host, `host:port`) of a URL with a path.
fn authority(url: &str) -> (&str, &str) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..]
        .find('/')
        .map_or(url.len(), |i| after_scheme + i);
    let host_start = url[..end].rfind('@').map_or(after_scheme, |i| i + 1);
    (&url[..host_start], &url[host_start..end])
}

#[cfg(test)]
mod tests {
    use super::through;

    #[test]
    fn a_database_url_is_pointed_through_a_proxy() {
        let proxy = "127.0.0.1:40001".parse().unwrap();
        assert_eq!(
            through("postgres://postgres@127.0.0.1:5432/it_1", proxy),
            "postgres://postgres@127.0.0.1:40001/it_1"
        );
        assert_eq!(
            through("postgres://app:p@ss@db:5432/x?sslmode=disable", proxy),
            "postgres://app:p@ss@127.0.0.1:40001/x?sslmode=disable"
        );
    }
}
