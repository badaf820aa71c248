//! Probe addresses: `host:port` for tcp probes and `http://host[:port][/path]` for http
//! probes, parsed once for the config's checks and for the executor's probes, so an address
//! the executor could not use is refused when the config is read.

/// A host and port to connect to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub host: String,
    pub port: u16,
}

impl Target {
    pub fn label(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

/// `host:port` (IPv6 in brackets).
pub fn host_port(address: &str) -> Result<Target, String> {
    let bad = || format!("`{address}` is not host:port (e.g. 127.0.0.1:6379)");
    let (host, port) = if let Some(rest) = address.strip_prefix('[') {
        let (host, rest) = rest.split_once(']').ok_or_else(bad)?;
        (host, rest.strip_prefix(':').ok_or_else(bad)?)
    } else {
        address.rsplit_once(':').ok_or_else(bad)?
    };
    if host.is_empty() {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok(Target {
        host: host.to_owned(),
        port,
    })
}

/// `http://host[:port][/path]` → connect target, Host header (the URL's authority), request
/// path.
pub fn http_url(url: &str) -> Result<(Target, String, String), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| format!("`{url}` is not an http:// URL (https is not supported)"))?;
    let (authority, path) = match rest.find(['/', '?']) {
        Some(i) if rest[i..].starts_with('/') => (&rest[..i], rest[i..].to_owned()),
        Some(i) => (&rest[..i], format!("/{}", &rest[i..])),
        None => (rest, "/".to_owned()),
    };
    let path = path.split('#').next().unwrap_or("/").to_owned();
    if authority.is_empty() || authority.contains('@') {
        return Err(format!("`{url}` has no usable host"));
    }
    let has_port = match authority.rfind(']') {
        Some(close) => authority[close..].contains(':'),
        None => authority.contains(':'),
    };
    let target = if has_port {
        host_port(authority)?
    } else {
        Target {
            host: authority
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_owned(),
            port: 80,
        }
    };
    Ok((target, authority.to_owned(), path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_and_urls_parse() {
        assert_eq!(
            host_port("127.0.0.1:80"),
            Ok(Target {
                host: "127.0.0.1".into(),
                port: 80
            })
        );
        assert_eq!(host_port("[::1]:9000").map(|t| t.host), Ok("::1".into()));
        assert!(host_port("localhost").is_err());
        assert!(host_port("host:0").is_err());
        let (target, authority, path) = http_url("http://127.0.0.1:8000/health?x=1").expect("url");
        assert_eq!(target.port, 8000);
        assert_eq!(authority, "127.0.0.1:8000");
        assert_eq!(path, "/health?x=1");
        let (target, _, path) = http_url("http://example.local").expect("url");
        assert_eq!((target.port, path.as_str()), (80, "/"));
        assert!(http_url("https://x/").is_err());
    }
}
