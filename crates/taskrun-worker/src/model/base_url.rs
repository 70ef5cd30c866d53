//! The `base_url` of an `openai` backend: where its requests go, and the
//! part of it that may be shown.
//!
//! An operator may put secrets in it: userinfo (`user:password@`) or a query
//! (`?api-key=…`). Requests keep them; errors (which reach the agent as its
//! model-error), logs and `Debug` show only `scheme://host[:port]/path`.

use std::fmt;
use std::net::IpAddr;

use ureq::http::Uri;

/// The path every request goes to, below the base URL's own path.
const CHAT_COMPLETIONS: &str = "/v1/chat/completions";

/// A checked `base_url`.
#[derive(Clone)]
pub(crate) struct BaseUrl {
    /// Where chat completions are POSTed: the base URL's path plus
    /// [`CHAT_COMPLETIONS`], then its query. Holds any secret; never shown.
    chat_completions: String,
    /// `scheme://host[:port]/path` of the base URL: what may be shown.
    shown: String,
    /// `http` (cleartext) rather than `https`.
    cleartext: bool,
    /// The host resolves to this machine (a loopback address or `localhost`).
    loopback: bool,
}

impl BaseUrl {
    /// Checks `text` (`http://` or `https://`, a host, an optional port,
    /// path and query; a fragment is dropped). The error never repeats the
    /// URL, which may hold a secret.
    pub(crate) fn parse(text: &str) -> Result<BaseUrl, String> {
        let cleartext = text.starts_with("http://");
        if !(cleartext || text.starts_with("https://")) {
            return Err("base_url must start with http:// or https://".into());
        }
        let text = text.split('#').next().unwrap_or_default();
        let (base, query) = match text.split_once('?') {
            Some((base, query)) => (base, Some(query)),
            None => (text, None),
        };
        let base = base.trim_end_matches('/');
        let chat_completions = match query {
            Some(query) => format!("{base}{CHAT_COMPLETIONS}?{query}"),
            None => format!("{base}{CHAT_COMPLETIONS}"),
        };
        let uri: Uri = chat_completions
            .parse()
            .map_err(|e| format!("base_url is not a valid url ({e}): write it as scheme://host[:port][/path]"))?;
        let host = uri.host().filter(|h| !h.is_empty()).ok_or("base_url has no host")?;
        let port = uri.port_u16().map(|p| format!(":{p}")).unwrap_or_default();
        let path = uri.path().strip_suffix(CHAT_COMPLETIONS).unwrap_or_default();
        // A `/` in a password ends the authority early: refuse what that
        // leaves (a port that is not a number, an `@` in the path) rather
        // than show a piece of the password as host or path.
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or_default();
        let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
        if host_port != format!("{host}{port}") || path.contains('@') {
            return Err("base_url is not a valid url: write it as scheme://host[:port][/path], \
                        with any / or @ in a user name, password or path percent-encoded (%2F, %40)"
                .into());
        }
        let scheme = if cleartext { "http" } else { "https" };
        Ok(BaseUrl {
            shown: format!("{scheme}://{host}{port}{path}"),
            loopback: is_loopback(host),
            cleartext,
            chat_completions,
        })
    }

    /// The URL chat completions are POSTed to, secrets included: for the
    /// request only, never for a message.
    pub(crate) fn chat_completions(&self) -> &str {
        &self.chat_completions
    }

    /// [`chat_completions`](BaseUrl::chat_completions) as it may be shown.
    pub(crate) fn shown_chat_completions(&self) -> String {
        format!("{}{CHAT_COMPLETIONS}", self.shown)
    }

    /// Plain `http://` to another machine: whatever is sent can be read on
    /// the way.
    pub(crate) fn is_cleartext_remote(&self) -> bool {
        self.cleartext && !self.loopback
    }
}

/// Shows `scheme://host[:port]/path` only.
impl fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.shown)
    }
}

impl fmt::Debug for BaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.shown, f)
    }
}

/// `localhost`, `127.0.0.0/8`, `[::1]` or `[::ffff:127.x.y.z]`.
fn is_loopback(host: &str) -> bool {
    let host = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if host.eq_ignore_ascii_case("localhost") || host.eq_ignore_ascii_case("localhost.") {
        return true;
    }
    match host.parse::<IpAddr>() {
        Ok(IpAddr::V4(ip)) => ip.is_loopback(),
        Ok(IpAddr::V6(ip)) => ip.is_loopback() || ip.to_ipv4_mapped().is_some_and(|v4| v4.is_loopback()),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_sent_but_never_shown() {
        let url =
            BaseUrl::parse("https://user:pa%40ss@api.example.com:8443/openai/?api-key=k3y&v=1#frag").expect("url");
        assert_eq!(
            url.chat_completions(),
            "https://user:pa%40ss@api.example.com:8443/openai/v1/chat/completions?api-key=k3y&v=1"
        );
        assert_eq!(url.to_string(), "https://api.example.com:8443/openai");
        assert_eq!(format!("{url:?}"), "\"https://api.example.com:8443/openai\"");
        assert_eq!(url.shown_chat_completions(), "https://api.example.com:8443/openai/v1/chat/completions");

        let plain = BaseUrl::parse("http://127.0.0.1:8000/").expect("url");
        assert_eq!(plain.chat_completions(), "http://127.0.0.1:8000/v1/chat/completions");
        assert_eq!(plain.to_string(), "http://127.0.0.1:8000");
    }

    #[test]
    fn bad_urls_are_refused_without_repeating_them() {
        for bad in [
            "ftp://x",
            "http://",
            "http://user:secret@",
            "http://us er:secret@host",
            "http://user:se/cret@host",
            "http://user:123/cret@host",
            "http://host:/x",
        ] {
            let error = BaseUrl::parse(bad).expect_err(bad);
            assert!(!error.contains("secret") && !error.contains(bad), "{bad}: {error}");
        }
    }

    #[test]
    fn cleartext_to_another_machine() {
        let check = |url: &str, expected: bool| {
            assert_eq!(BaseUrl::parse(url).expect(url).is_cleartext_remote(), expected, "{url}");
        };
        for local in [
            "http://127.0.0.1:8000",
            "http://127.1.2.3",
            "http://localhost:11434",
            "http://LOCALHOST.",
            "http://[::1]:8080/v",
            "http://[::ffff:127.0.0.1]",
            "http://user:pw@127.0.0.1",
        ] {
            check(local, false);
        }
        for remote in ["http://10.0.0.5:8000", "http://api.example.com", "http://[::2]", "http://localhost.example.com"]
        {
            check(remote, true);
        }
        check("https://api.example.com", false);
    }
}
