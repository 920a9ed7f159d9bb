//! The egress policy shared by both runtimes: a function's `allowed_hosts` entries parsed into
//! an [`Allowlist`], the check made before DNS ([`Allowlist::allows`]) and the SSRF check made
//! on every resolved address ([`Allowlist::allows_ip`]). No IO: the callers resolve and connect.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// Most entries one function's `allowed_hosts` may hold. Bounds the work of every outbound
/// check (a linear scan) and the size of the spec stored with each revision.
pub const MAX_ALLOWED_HOSTS: usize = 100;

/// One `allowed_hosts` entry, parsed: `"https://api.example.com"`, `"http://10.0.0.5:8080"`,
/// `"*.example.org:443"`, `"10.0.0.0/8"`, `"api.example.com"` (any scheme, default ports
/// 80/443). Serialized as its canonical text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct HostRule {
    scheme: Option<Scheme>,
    host: HostPattern,
    port: PortRule,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Http,
    Https,
}

impl Scheme {
    fn as_str(self) -> &'static str {
        match self {
            Scheme::Http => "http",
            Scheme::Https => "https",
        }
    }

    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }

    fn parse(s: &str) -> Option<Scheme> {
        if s.eq_ignore_ascii_case("http") {
            Some(Scheme::Http)
        } else if s.eq_ignore_ascii_case("https") {
            Some(Scheme::Https)
        } else {
            None
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host name or public address (private addresses still need an explicit rule).
    Any,
    /// A DNS name, lower case, without a trailing dot.
    Name(String),
    /// `*.example.org`: any name strictly below `example.org` (stored as `.example.org`).
    Suffix(String),
    /// An address, or a range of addresses (`prefix` bits; a single address has them all).
    Net { addr: IpAddr, prefix: u8 },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortRule {
    /// No port written: the scheme's default (80 for http, 443 for https, either without one).
    Default,
    /// `:*`: any port.
    Any,
    Exact(u16),
}

impl HostRule {
    /// Parses one entry; the error names the entry and how to write it.
    pub fn parse(entry: &str) -> Result<HostRule, String> {
        let bad = |why: &str| format!("allowed_hosts entry {entry:?} {why}");
        let text = entry.trim();
        if text.is_empty() {
            return Err(bad(
                "is empty; write a host such as \"https://api.example.com\"",
            ));
        }
        let (scheme, rest) = match text.split_once("://") {
            Some((s, rest)) => match Scheme::parse(s) {
                Some(s) => (Some(s), rest),
                None => {
                    return Err(bad(&format!(
                        "has the unsupported scheme {s:?}; use \"http://\" or \"https://\", or leave the scheme out to allow both"
                    )));
                }
            },
            None => (None, text),
        };
        // One trailing slash is harmless ("https://api.example.com/"); anything after it is a
        // path, and the policy is about where a function connects, not what it asks for.
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains('@') {
            return Err(bad(
                "has user information; write only scheme, host and port",
            ));
        }
        if rest.contains(['?', '#']) {
            return Err(bad(
                "has a query or fragment; write only scheme, host and port",
            ));
        }
        let (host_text, port_text) = split_host_port(rest).map_err(|why| bad(&why))?;
        let port = match port_text {
            None => PortRule::Default,
            Some("*") => PortRule::Any,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => PortRule::Exact(n),
                _ => {
                    return Err(bad(&format!(
                        "has the invalid port {p:?}; use a number from 1 to 65535, or \"*\" for any port"
                    )));
                }
            },
        };
        let host = parse_host_pattern(host_text).map_err(|why| bad(&why))?;
        Ok(HostRule { scheme, host, port })
    }

    fn scheme_matches(&self, scheme: Option<&str>) -> bool {
        match (self.scheme, scheme) {
            (None, _) | (_, None) => true,
            (Some(rule), Some(req)) => rule.as_str().eq_ignore_ascii_case(req),
        }
    }

    fn port_matches(&self, scheme: Option<&str>, port: u16) -> bool {
        match self.port {
            PortRule::Any => true,
            PortRule::Exact(p) => p == port,
            PortRule::Default => match self.scheme.or_else(|| scheme.and_then(Scheme::parse)) {
                Some(s) => s.default_port() == port,
                None => port == 80 || port == 443,
            },
        }
    }

    /// Whether this rule names `ip` itself or a range containing it (not `*`, not a name).
    fn names_ip(&self, ip: IpAddr) -> bool {
        match &self.host {
            HostPattern::Net { addr, prefix } => net_contains(*addr, *prefix, ip),
            _ => false,
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(s) = self.scheme {
            write!(f, "{}://", s.as_str())?;
        }
        let bracket = matches!(
            self.host,
            HostPattern::Net {
                addr: IpAddr::V6(_),
                ..
            }
        ) && self.port != PortRule::Default;
        if bracket {
            f.write_str("[")?;
        }
        match &self.host {
            HostPattern::Any => f.write_str("*")?,
            HostPattern::Name(n) => f.write_str(n)?,
            HostPattern::Suffix(s) => write!(f, "*{s}")?,
            HostPattern::Net { addr, prefix } => {
                let full = if addr.is_ipv4() { 32 } else { 128 };
                if *prefix == full {
                    write!(f, "{addr}")?;
                } else {
                    write!(f, "{addr}/{prefix}")?;
                }
            }
        }
        if bracket {
            f.write_str("]")?;
        }
        match self.port {
            PortRule::Default => Ok(()),
            PortRule::Any => f.write_str(":*"),
            PortRule::Exact(p) => write!(f, ":{p}"),
        }
    }
}

impl From<HostRule> for String {
    fn from(rule: HostRule) -> String {
        rule.to_string()
    }
}

impl TryFrom<String> for HostRule {
    type Error = String;

    fn try_from(s: String) -> Result<HostRule, String> {
        HostRule::parse(&s)
    }
}

/// Splits `host[:port]`, `[v6]:port` or a bare IPv6 address (no port possible without brackets).
fn split_host_port(rest: &str) -> Result<(&str, Option<&str>), String> {
    if let Some(inner) = rest.strip_prefix('[') {
        let Some((host, after)) = inner.split_once(']') else {
            return Err("has an unclosed '['; write an IPv6 address as \"[fd00::1]:8080\"".into());
        };
        return match after {
            "" => Ok((host, None)),
            _ => match after.strip_prefix(':') {
                Some(p) => Ok((host, Some(p))),
                None => Err(format!(
                    "has {after:?} after the address; write a port as \"[fd00::1]:8080\""
                )),
            },
        };
    }
    match rest.matches(':').count() {
        0 => Ok((rest, None)),
        1 => {
            let (h, p) = rest.split_once(':').unwrap_or((rest, ""));
            Ok((h, Some(p)))
        }
        _ => Ok((rest, None)),
    }
}

fn parse_host_pattern(text: &str) -> Result<HostPattern, String> {
    if text.is_empty() {
        return Err("has no host; write a host such as \"https://api.example.com\"".into());
    }
    if text == "*" {
        return Ok(HostPattern::Any);
    }
    if let Some((addr, len)) = text.split_once('/') {
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return Err(format!(
                "has a path or an invalid address range {text:?}; allowed_hosts holds hosts, not paths (a range is written \"10.0.0.0/8\")"
            ));
        };
        let full = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match len.parse::<u8>() {
            Ok(p) if p <= full => p,
            _ => {
                return Err(format!(
                    "has the invalid prefix length {len:?}; use 0 to {full} for this address"
                ));
            }
        };
        return Ok(HostPattern::Net {
            addr: mask(addr, prefix),
            prefix,
        });
    }
    if let Ok(addr) = text.parse::<IpAddr>() {
        let prefix = if addr.is_ipv4() { 32 } else { 128 };
        return Ok(HostPattern::Net { addr, prefix });
    }
    let lower = text.to_ascii_lowercase();
    let lower = lower.strip_suffix('.').unwrap_or(&lower);
    if let Some(suffix) = lower.strip_prefix("*.") {
        validate_name(suffix)?;
        return Ok(HostPattern::Suffix(format!(".{suffix}")));
    }
    if lower.contains('*') {
        return Err(
            "has a '*' inside the name; a wildcard stands only for whole leading labels, as in \"*.example.org\""
                .into(),
        );
    }
    validate_name(lower)?;
    Ok(HostPattern::Name(lower.to_owned()))
}

fn validate_name(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_');
    let labels_ok = name
        .split('.')
        .all(|l| !l.is_empty() && l.len() <= 63 && !l.starts_with('-') && !l.ends_with('-'));
    if name.is_empty() || name.len() > 253 || !ok_chars || !labels_ok {
        return Err(format!(
            "has the invalid host name {name:?}; use letters, digits, '-' and dots (write non-ASCII names in their xn-- form)"
        ));
    }
    if name
        .rsplit('.')
        .next()
        .is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(format!(
            "has {name:?}, which is neither a host name nor an IP address; write an address in dotted form, such as \"10.0.0.5\""
        ));
    }
    Ok(())
}

fn mask(addr: IpAddr, prefix: u8) -> IpAddr {
    match addr {
        IpAddr::V4(a) => {
            let m = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V4(Ipv4Addr::from(u32::from(a) & m))
        }
        IpAddr::V6(a) => {
            let m = u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0);
            IpAddr::V6(Ipv6Addr::from(u128::from(a) & m))
        }
    }
}

fn net_contains(net: IpAddr, prefix: u8, ip: IpAddr) -> bool {
    let direct = |ip: IpAddr| net.is_ipv4() == ip.is_ipv4() && mask(ip, prefix) == net;
    // An IPv4-mapped address reaches the IPv4 host, so a rule for either form covers both.
    direct(ip) || direct(canonical(ip))
}

/// The address a connection to `ip` actually reaches: IPv4-mapped (`::ffff:a.b.c.d`) and
/// NAT64 (`64:ff9b::a.b.c.d`) forms become the IPv4 address inside them.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return IpAddr::V4(v4);
            }
            let s = v6.segments();
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let n = u128::from(v6) as u32;
                return IpAddr::V4(Ipv4Addr::from(n));
            }
            ip
        }
        IpAddr::V4(_) => ip,
    }
}

/// Why a connection to `ip` is an SSRF risk, or `None` for an ordinary public address:
/// loopback, link-local (with cloud metadata at 169.254.169.254), private, shared (CGNAT),
/// unspecified, multicast, broadcast and reserved ranges, in IPv4, IPv6 and IPv4-mapped form.
pub fn ssrf_risk(ip: IpAddr) -> Option<&'static str> {
    match canonical(ip) {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            if v4.is_loopback() {
                Some("loopback address")
            } else if v4 == Ipv4Addr::new(169, 254, 169, 254) {
                Some("cloud metadata address")
            } else if v4.is_link_local() {
                Some("link-local address")
            } else if v4.is_private() {
                Some("private address")
            } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
                Some("shared (carrier-grade NAT) address")
            } else if o[0] == 0 {
                Some("unspecified (\"this network\") address")
            } else if v4.is_broadcast() {
                Some("broadcast address")
            } else if v4.is_multicast() {
                Some("multicast address")
            } else if o[0] >= 240 {
                Some("reserved address")
            } else {
                None
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() {
                Some("loopback address")
            } else if v6.is_unspecified() {
                Some("unspecified address")
            } else if (first & 0xffc0) == 0xfe80 {
                Some("link-local address")
            } else if (first & 0xfe00) == 0xfc00 {
                Some("private (unique local) address")
            } else if v6.is_multicast() {
                Some("multicast address")
            } else if (first & 0xffc0) == 0xfec0 {
                Some("site-local address")
            } else if v6.segments()[..6] == [0; 6] {
                // IPv4-compatible (::a.b.c.d), deprecated: never a public destination.
                Some("reserved address")
            } else {
                None
            }
        }
    }
}

/// A function's parsed allowlist; empty = no outbound network at all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allowlist {
    rules: Vec<HostRule>,
}

impl Allowlist {
    /// Parses a function's `allowed_hosts` entries; the error names the first bad entry and how
    /// to write it.
    pub fn parse(entries: &[String]) -> Result<Allowlist, String> {
        if entries.len() > MAX_ALLOWED_HOSTS {
            return Err(format!(
                "allowed_hosts has {} entries; at most {MAX_ALLOWED_HOSTS} are allowed (use a wildcard such as \"*.example.org\" or a range such as \"10.0.0.0/8\")",
                entries.len()
            ));
        }
        let rules = entries
            .iter()
            .map(|e| HostRule::parse(e))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Allowlist { rules })
    }

    /// Whether the list is empty, so the function has no outbound network at all.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The parsed rules, in manifest order.
    pub fn rules(&self) -> &[HostRule] {
        &self.rules
    }

    /// Whether a request to `scheme://host:port` may be attempted (before DNS). `scheme` is
    /// `"http"` or `"https"` (a CONNECT tunnel passes `None`: any scheme). `host` is a name or
    /// an address, IPv6 with or without brackets; names compare case-insensitively.
    pub fn allows(&self, scheme: Option<&str>, host: &str, port: u16) -> bool {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        let ip = host.parse::<IpAddr>().ok();
        self.rules.iter().any(|rule| {
            rule.scheme_matches(scheme)
                && rule.port_matches(scheme, port)
                && match (&rule.host, ip) {
                    (HostPattern::Any, _) => true,
                    (HostPattern::Net { addr, prefix }, Some(ip)) => {
                        net_contains(*addr, *prefix, ip)
                    }
                    (HostPattern::Name(n), None) => *n == host,
                    (HostPattern::Suffix(s), None) => host.len() > s.len() && host.ends_with(s),
                    _ => false,
                }
        })
    }

    /// After resolution: whether connecting to `ip` for a request allowed by name is fine.
    /// Loopback, link-local (169.254.0.0/16, fe80::/10, incl. 169.254.169.254 metadata),
    /// private (10/8, 172.16/12, 192.168/16, fc00::/7), unspecified, multicast, broadcast and
    /// IPv4-mapped forms of them are refused unless a rule names that IP or a CIDR range that
    /// contains it explicitly (on a port the rule allows).
    pub fn allows_ip(&self, ip: IpAddr, port: u16) -> bool {
        if ssrf_risk(ip).is_none() {
            return true;
        }
        self.rules
            .iter()
            .any(|rule| rule.names_ip(ip) && rule.port_matches(None, port))
    }

    /// The manifest line that would allow `scheme://host:port`, for error messages:
    /// `allowed_hosts = ["https://api.example.com"]`.
    pub fn suggestion(scheme: Option<&str>, host: &str, port: u16) -> String {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host.to_ascii_lowercase()
        };
        let entry = match scheme.and_then(Scheme::parse) {
            Some(s) if s.default_port() == port => format!("{}://{host}", s.as_str()),
            Some(s) => format!("{}://{host}:{port}", s.as_str()),
            None => format!("{host}:{port}"),
        };
        format!("allowed_hosts = [{entry:?}]")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(entries: &[&str]) -> Allowlist {
        let entries: Vec<String> = entries.iter().map(|s| s.to_string()).collect();
        Allowlist::parse(&entries).unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn empty_list_allows_nothing() {
        let l = Allowlist::default();
        assert!(l.is_empty());
        assert!(!l.allows(Some("https"), "example.com", 443));
        assert!(!l.allows(None, "1.1.1.1", 443));
        assert!(!l.allows_ip(ip("127.0.0.1"), 80));
        assert!(
            l.allows_ip(ip("93.184.216.34"), 80),
            "public addresses are not SSRF"
        );
    }

    #[test]
    fn scheme_host_and_default_port() {
        let l = list(&["https://api.example.com"]);
        assert!(l.allows(Some("https"), "api.example.com", 443));
        assert!(l.allows(Some("https"), "API.Example.com.", 443));
        assert!(!l.allows(Some("http"), "api.example.com", 80));
        assert!(!l.allows(Some("https"), "api.example.com", 8443));
        assert!(!l.allows(Some("https"), "evil.example.com", 443));
        assert!(!l.allows(Some("https"), "api.example.com.evil.net", 443));
        assert!(
            l.allows(None, "api.example.com", 443),
            "CONNECT has no scheme"
        );
        assert!(!l.allows(None, "api.example.com", 80));
    }

    #[test]
    fn no_scheme_means_both_with_their_default_ports() {
        let l = list(&["api.example.com"]);
        assert!(l.allows(Some("http"), "api.example.com", 80));
        assert!(l.allows(Some("https"), "api.example.com", 443));
        assert!(!l.allows(Some("http"), "api.example.com", 443));
        assert!(l.allows(None, "api.example.com", 80));
        assert!(l.allows(None, "api.example.com", 443));
        assert!(!l.allows(None, "api.example.com", 22));
    }

    #[test]
    fn explicit_and_any_ports() {
        let l = list(&["http://10.0.0.5:8080", "db.internal:*"]);
        assert!(l.allows(Some("http"), "10.0.0.5", 8080));
        assert!(!l.allows(Some("http"), "10.0.0.5", 80));
        assert!(!l.allows(Some("https"), "10.0.0.5", 8080));
        assert!(l.allows(Some("https"), "db.internal", 5432));
        assert!(l.allows(None, "db.internal", 1));
    }

    #[test]
    fn wildcard_matches_subdomains_only() {
        let l = list(&["*.example.org:443"]);
        assert!(l.allows(Some("https"), "a.example.org", 443));
        assert!(l.allows(Some("https"), "a.b.example.org", 443));
        assert!(!l.allows(Some("https"), "example.org", 443));
        assert!(!l.allows(Some("https"), "badexample.org", 443));
        assert!(!l.allows(Some("https"), "a.example.org", 80));
    }

    #[test]
    fn ranges_match_addresses_not_names() {
        let l = list(&["10.0.0.0/8", "[fd00::]:9000", "fd12::/16"]);
        assert!(l.allows(Some("http"), "10.1.2.3", 80));
        assert!(l.allows(Some("https"), "10.255.0.1", 443));
        assert!(!l.allows(Some("http"), "11.0.0.1", 80));
        assert!(!l.allows(Some("http"), "ten.example", 80));
        assert!(l.allows(Some("http"), "[fd00::]", 9000));
        assert!(l.allows(Some("http"), "fd00::", 9000));
        assert!(l.allows(Some("https"), "fd12:0:0::7", 443));
        assert!(l.allows_ip(ip("10.9.9.9"), 80));
        assert!(
            !l.allows_ip(ip("10.9.9.9"), 8080),
            "the rule allows ports 80/443 only"
        );
        assert!(
            l.allows_ip(ip("::ffff:10.9.9.9"), 443),
            "mapped form of a listed range"
        );
    }

    #[test]
    fn ssrf_addresses_refused_unless_named() {
        let l = list(&["http://localhost:8080", "*"]);
        assert!(l.allows(Some("http"), "localhost", 8080));
        for bad in [
            "127.0.0.1",
            "127.8.8.8",
            "::1",
            "169.254.169.254",
            "169.254.1.1",
            "fe80::1",
            "10.0.0.1",
            "172.16.0.1",
            "172.31.255.255",
            "192.168.1.1",
            "fc00::1",
            "fd00::1",
            "0.0.0.0",
            "::",
            "224.0.0.1",
            "ff02::1",
            "255.255.255.255",
            "100.64.0.1",
            "::ffff:127.0.0.1",
            "::ffff:169.254.169.254",
            "64:ff9b::a9fe:a9fe",
            "::127.0.0.1",
        ] {
            assert!(ssrf_risk(ip(bad)).is_some(), "{bad} should be an SSRF risk");
            assert!(!l.allows_ip(ip(bad), 8080), "{bad} must be refused");
        }
        for good in [
            "93.184.216.34",
            "172.32.0.1",
            "2606:4700::1111",
            "::ffff:1.1.1.1",
        ] {
            assert!(ssrf_risk(ip(good)).is_none(), "{good} is public");
            assert!(l.allows_ip(ip(good), 443));
        }
        assert_eq!(
            ssrf_risk(ip("169.254.169.254")),
            Some("cloud metadata address")
        );
    }

    #[test]
    fn naming_the_address_opens_it() {
        let l = list(&["http://localhost:8080", "http://127.0.0.1:8080"]);
        assert!(l.allows_ip(ip("127.0.0.1"), 8080));
        assert!(l.allows_ip(ip("::ffff:127.0.0.1"), 8080));
        assert!(
            !l.allows_ip(ip("127.0.0.1"), 8081),
            "another port is not named"
        );
        assert!(!l.allows_ip(ip("127.0.0.2"), 8080));
        let l = list(&["127.0.0.0/8:*"]);
        assert!(l.allows_ip(ip("127.0.0.2"), 1234));
        let l = list(&["*:*"]);
        assert!(
            !l.allows_ip(ip("127.0.0.1"), 80),
            "'*' does not name private addresses"
        );
    }

    #[test]
    fn bad_entries_name_the_entry_and_the_fix() {
        for (entry, expect) in [
            ("", "is empty"),
            ("ftp://files.example.com", "unsupported scheme \"ftp\""),
            ("https://api.example.com/v1", "not paths"),
            ("https://user@api.example.com", "user information"),
            ("https://api.example.com?x=1", "query"),
            ("https://api.example.com:0", "invalid port"),
            ("https://api.example.com:99999", "invalid port"),
            ("https://api.example.com:http", "invalid port"),
            ("api.*.example.com", "wildcard"),
            ("10.0.0.0/33", "prefix length"),
            ("exa mple.com", "invalid host name"),
            ("2130706433", "neither a host name nor an IP"),
            ("[::1", "unclosed"),
            ("https://", "no host"),
        ] {
            let err = HostRule::parse(entry).unwrap_err();
            assert!(err.contains(&format!("{entry:?}")), "{err}");
            assert!(err.contains(expect), "{entry}: {err}");
        }
        let many: Vec<String> = (0..=MAX_ALLOWED_HOSTS)
            .map(|i| format!("h{i}.example"))
            .collect();
        assert!(Allowlist::parse(&many).unwrap_err().contains("at most"));
    }

    #[test]
    fn canonical_text_round_trips() {
        for entry in [
            "https://api.example.com",
            "http://10.0.0.5:8080",
            "*.example.org:443",
            "10.0.0.0/8",
            "api.example.com",
            "[fd00::1]:9000",
            "fd00::/8",
            "*:*",
            "https://*",
        ] {
            let rule = HostRule::parse(entry).unwrap();
            assert_eq!(rule.to_string(), entry);
        }
        assert_eq!(
            HostRule::parse("10.1.2.3/8").unwrap().to_string(),
            "10.0.0.0/8"
        );
        let l = list(&["https://API.example.com/", "10.0.0.0/8"]);
        let json = serde_json::to_string(&l).unwrap();
        assert_eq!(
            json,
            r#"{"rules":["https://api.example.com","10.0.0.0/8"]}"#
        );
        assert_eq!(serde_json::from_str::<Allowlist>(&json).unwrap(), l);
    }

    #[test]
    fn suggestions_are_manifest_lines() {
        assert_eq!(
            Allowlist::suggestion(Some("https"), "evil.example", 443),
            r#"allowed_hosts = ["https://evil.example"]"#
        );
        assert_eq!(
            Allowlist::suggestion(Some("http"), "127.0.0.1", 8080),
            r#"allowed_hosts = ["http://127.0.0.1:8080"]"#
        );
        assert_eq!(
            Allowlist::suggestion(None, "::1", 443),
            r#"allowed_hosts = ["[::1]:443"]"#
        );
        // The suggestion parses and allows what it was made for.
        let line = Allowlist::suggestion(Some("http"), "Api.Example.com", 8080);
        let entry = line.split('"').nth(1).unwrap().to_string();
        assert!(
            Allowlist::parse(&[entry])
                .unwrap()
                .allows(Some("http"), "api.example.com", 8080)
        );
    }
}
