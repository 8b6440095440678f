//! A small client for the Airlock REST API, configured by `AIRLOCK_URL` and
//! `AIRLOCK_TOKEN`. Errors are phrased for the operator; the token is sent as
//! a bearer header and never printed.

use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use reqwest::{StatusCode, Url};
use serde::de::DeserializeOwned;

/// Where the API listens when `AIRLOCK_URL` is not set (the `api_listen` default).
pub const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Long enough for `audit verify` on a big store; short enough not to hang a script forever.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

pub struct ApiClient {
    base: Url,
    token: Option<String>,
    http: reqwest::Client,
}

// Hand-written so that debug output can never show the token.
impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient")
            .field("base", &self.base.as_str())
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl ApiClient {
    /// From `AIRLOCK_URL` (default [`DEFAULT_URL`]) and `AIRLOCK_TOKEN`.
    pub fn from_env() -> anyhow::Result<Self> {
        let url = std::env::var("AIRLOCK_URL")
            .ok()
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| DEFAULT_URL.to_owned());
        let token = std::env::var("AIRLOCK_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty());
        Self::new(&url, token)
    }

    pub fn new(url: &str, token: Option<String>) -> anyhow::Result<Self> {
        let base =
            Url::parse(url.trim()).with_context(|| format!("AIRLOCK_URL {url:?} is not a URL"))?;
        match base.scheme() {
            "http" | "https" => {}
            other => {
                bail!("AIRLOCK_URL {base}: unsupported scheme {other:?}; use http:// or https://")
            }
        }
        // reqwest's rustls backend needs a process-wide provider; `main`
        // installs it, but the client must not depend on who built it first.
        let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .user_agent(concat!("airlock-cli/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(ApiClient { base, token, http })
    }

    /// The URL of `segments` below the base; each segment is percent-encoded,
    /// so a user-supplied id cannot change the path or add a query.
    fn url(&self, segments: &[&str]) -> anyhow::Result<Url> {
        let mut url = self.base.clone();
        url.path_segments_mut()
            .map_err(|()| anyhow!("AIRLOCK_URL {} cannot have a path", self.base))?
            .pop_if_empty()
            .extend(segments);
        Ok(url)
    }

    /// GETs an API resource and returns its JSON exactly as sent.
    pub async fn get_value(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<serde_json::Value> {
        self.get(segments, query).await
    }

    /// GETs an API resource and prints it: the API's JSON as sent with
    /// `json`, otherwise decoded and rendered for people by `render`.
    pub async fn print<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
        json: bool,
        render: impl FnOnce(&T) -> String,
    ) -> anyhow::Result<()> {
        if json {
            print_json(&self.get_value(segments, query).await?)
        } else {
            let value: T = self.get(segments, query).await?;
            print!("{}", render(&value));
            Ok(())
        }
    }

    /// GETs an API resource and decodes its JSON.
    pub async fn get<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> anyhow::Result<T> {
        let token = self.token.as_deref().ok_or_else(|| {
            anyhow!("AIRLOCK_TOKEN is not set; the Airlock API needs a bearer token")
        })?;
        let url = self.url(segments)?;
        let resp = self
            .http
            .get(url)
            .query(query)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        if !status.is_success() {
            return Err(self.status_error(status, &body));
        }
        serde_json::from_slice(&body)
            .with_context(|| format!("unexpected response from the Airlock API at {}", self.base))
    }

    /// POSTs a JSON body and returns the response's JSON exactly as sent.
    pub async fn post_value(
        &self,
        segments: &[&str],
        body: &serde_json::Value,
    ) -> anyhow::Result<serde_json::Value> {
        self.post(segments, body).await
    }

    /// POSTs a JSON body and decodes the JSON answer.
    pub async fn post<T: DeserializeOwned>(
        &self,
        segments: &[&str],
        body: &serde_json::Value,
    ) -> anyhow::Result<T> {
        let token = self.token.as_deref().ok_or_else(|| {
            anyhow!("AIRLOCK_TOKEN is not set; the Airlock API needs a bearer token")
        })?;
        let url = self.url(segments)?;
        let resp = self
            .http
            .post(url)
            .json(body)
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.transport_error(&e))?;
        if !status.is_success() {
            return Err(self.status_error(status, &bytes));
        }
        serde_json::from_slice(&bytes)
            .with_context(|| format!("unexpected response from the Airlock API at {}", self.base))
    }

    /// Opens a streaming GET (Server-Sent Events) and returns the response
    /// once its headers arrived; read it with `chunk()`. The client's
    /// overall timeout does not apply: a stream may stay open for days.
    pub async fn stream(&self, segments: &[&str]) -> anyhow::Result<reqwest::Response> {
        let token = self.token.as_deref().ok_or_else(|| {
            anyhow!("AIRLOCK_TOKEN is not set; the Airlock API needs a bearer token")
        })?;
        let url = self.url(segments)?;
        let resp = self
            .http
            .get(url)
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .timeout(Duration::from_secs(100 * 365 * 24 * 3600))
            .bearer_auth(token)
            .send()
            .await
            .map_err(|e| self.transport_error(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(self.status_error(status, &body));
        }
        Ok(resp)
    }

    fn transport_error(&self, e: &reqwest::Error) -> anyhow::Error {
        // reqwest's own message repeats the URL; the root cause says why.
        let mut cause: &dyn std::error::Error = e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        if e.is_timeout() {
            anyhow!("the Airlock API at {} did not answer in time", self.base)
        } else if e.is_connect() {
            anyhow!("cannot reach Airlock API at {}: {cause}", self.base)
        } else {
            anyhow!(
                "request to the Airlock API at {} failed: {cause}",
                self.base
            )
        }
    }

    fn status_error(&self, status: StatusCode, body: &[u8]) -> anyhow::Error {
        let message = serde_json::from_slice::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_owned))
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                super::table::truncate(text.trim(), 200)
            });
        match status {
            StatusCode::UNAUTHORIZED => {
                anyhow!("AIRLOCK_TOKEN rejected by the Airlock API at {}", self.base)
            }
            StatusCode::FORBIDDEN => anyhow!("not allowed: {message}"),
            StatusCode::NOT_FOUND => anyhow!("{message}"),
            _ => anyhow!("the Airlock API answered {status}: {message}"),
        }
    }
}

/// Prints JSON for scripts (`--json`), pretty.
pub fn print_json(value: &serde_json::Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_and_https_are_accepted() {
        assert!(ApiClient::new("http://127.0.0.1:8080", None).is_ok());
        assert!(ApiClient::new("https://gw.example", None).is_ok());
        let err = ApiClient::new("ftp://gw.example", None).unwrap_err();
        assert!(err.to_string().contains("unsupported scheme"), "{err}");
        assert!(ApiClient::new("not a url", None).is_err());
    }

    #[test]
    fn segments_are_encoded_and_keep_a_base_path() {
        let c = ApiClient::new("http://h:1/prefix/", None).unwrap();
        let url = c.url(&["api", "sessions", "a/b?c"]).unwrap();
        assert_eq!(url.as_str(), "http://h:1/prefix/api/sessions/a%2Fb%3Fc");
    }

    #[test]
    fn debug_never_shows_the_token() {
        let c = ApiClient::new("http://h:1", Some("s3cret-token".into())).unwrap();
        assert!(!format!("{c:?}").contains("s3cret"));
    }

    #[tokio::test]
    async fn unreachable_api_is_named() {
        // A port that was just free: nothing listens there now.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let url = format!("http://127.0.0.1:{port}");
        let c = ApiClient::new(&url, Some("t".into())).unwrap();
        let err = c
            .get_value(&["api", "sessions"], &[])
            .await
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with(&format!("cannot reach Airlock API at {url}/")),
            "{err}"
        );
        assert!(!err.contains("Bearer"));
    }

    #[tokio::test]
    async fn missing_token_is_reported_before_any_request() {
        let c = ApiClient::new("http://127.0.0.1:9", None).unwrap();
        let err = c.get_value(&["api", "sessions"], &[]).await.unwrap_err();
        assert!(
            err.to_string().contains("AIRLOCK_TOKEN is not set"),
            "{err}"
        );
    }
}
