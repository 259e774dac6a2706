//! A Docker registry's v2 HTTP API (distribution), over reqwest with HTTP Basic auth:
//! ping, manifest digest by tag, manifest get/put, delete by digest, tag list.
//!
//! No policy: callers decide what 401, 404 or 405 mean for them. Token (Bearer) auth is
//! not implemented; a registry that asks for it is reported as such.
//! The URL is the target's `registry.url`: `host:port` (plain HTTP on loopback, HTTPS
//! elsewhere, as the Docker daemon treats them) or a full `http(s)://` URL.

use std::time::Duration;

use anyhow::{Context, bail};
use reqwest::{Method, RequestBuilder, StatusCode};

use super::http;

/// Every manifest type a push may produce; the digest answered is of the stored bytes.
pub const MANIFEST_TYPES: &str = "application/vnd.docker.distribution.manifest.v2+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.oci.image.manifest.v1+json, application/vnd.oci.image.index.v1+json";

pub struct Registry {
    base: String,
    /// `host[:port]`, as image references name the registry.
    pub host: String,
    auth: Option<(String, String)>,
    client: reqwest::Client,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ping {
    Ok,
    /// 401; the `Www-Authenticate` challenge.
    Unauthorized(String),
    /// It answered, but neither 2xx nor 401: "500 Internal Server Error: <body snippet>".
    Answered(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delete {
    Done,
    NotFound,
    /// 405: the registry does not allow deletes.
    Unsupported,
}

/// How many characters of an unexpected answer's body an error quotes.
const SNIPPET: usize = 200;

/// "500 Internal Server Error: <the body's first line(s), whitespace folded, cut>".
async fn answer(resp: reqwest::Response) -> String {
    let status = resp.status();
    // Read at most a few KiB: an error page is not worth more.
    let mut body = Vec::new();
    let mut resp = resp;
    while body.len() < 4096 {
        match resp.chunk().await {
            Ok(Some(c)) => body.extend_from_slice(&c),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&body);
    let folded: String = text
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .chars()
        .filter(|c| !c.is_control())
        .collect();
    let mut snippet: String = folded.chars().take(SNIPPET).collect();
    if folded.chars().count() > SNIPPET {
        snippet.push('…');
    }
    if snippet.is_empty() {
        format!("{status} (empty body)")
    } else {
        format!("{status}: {snippet}")
    }
}

/// `host:port` of a registry URL.
pub fn host_of(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split('/').next().unwrap_or(rest)
}

impl Registry {
    pub fn new(url: &str, auth: Option<(String, String)>) -> anyhow::Result<Registry> {
        let host = host_of(url).to_owned();
        let base = if url.contains("://") {
            url.trim_end_matches('/').to_owned()
        } else {
            let h = host.rsplit_once(':').map_or(host.as_str(), |(h, _)| h);
            let local = h == "localhost" || h.starts_with("127.") || h == "[::1]";
            format!("{}://{host}", if local { "http" } else { "https" })
        };
        Ok(Registry {
            base,
            host,
            auth,
            client: http::client(Duration::from_secs(30))?,
        })
    }

    /// The Basic credentials in use, if any.
    pub fn auth(&self) -> Option<(&str, &str)> {
        self.auth.as_ref().map(|(u, p)| (u.as_str(), p.as_str()))
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        let r = self.client.request(method, format!("{}{path}", self.base));
        match &self.auth {
            Some((u, p)) => r.basic_auth(u, Some(p)),
            None => r,
        }
    }

    async fn send(&self, r: RequestBuilder, what: &str) -> anyhow::Result<reqwest::Response> {
        r.send()
            .await
            .with_context(|| format!("registry {}: {what}", self.base))
    }

    pub async fn ping(&self) -> anyhow::Result<Ping> {
        let resp = self.send(self.req(Method::GET, "/v2/"), "GET /v2/").await?;
        match resp.status() {
            s if s.is_success() => Ok(Ping::Ok),
            StatusCode::UNAUTHORIZED => Ok(Ping::Unauthorized(
                resp.headers()
                    .get("www-authenticate")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("")
                    .to_owned(),
            )),
            _ => Ok(Ping::Answered(answer(resp).await)),
        }
    }

    /// An unexpected answer, with its status and the start of its body.
    async fn fail(&self, what: &str, resp: reqwest::Response) -> anyhow::Error {
        let hint = if resp.status() == StatusCode::UNAUTHORIZED {
            " (credentials refused)"
        } else {
            ""
        };
        let answer = answer(resp).await;
        anyhow::anyhow!("registry {}: {what} answered {answer}{hint}", self.base)
    }

    /// `Docker-Content-Digest` of `name:reference`; None when there is no such manifest.
    pub async fn manifest_digest(
        &self,
        name: &str,
        reference: &str,
    ) -> anyhow::Result<Option<String>> {
        let what = format!("HEAD /v2/{name}/manifests/{reference}");
        let r = self
            .req(Method::HEAD, &format!("/v2/{name}/manifests/{reference}"))
            .header("Accept", MANIFEST_TYPES);
        let resp = self.send(r, &what).await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(None),
            s if s.is_success() => match resp.headers().get("docker-content-digest") {
                Some(d) => Ok(Some(d.to_str()?.to_owned())),
                None => bail!(
                    "registry {}: {what}: no Docker-Content-Digest header",
                    self.base
                ),
            },
            _ => Err(self.fail(&what, resp).await),
        }
    }

    /// The manifest's media type and bytes.
    pub async fn get_manifest(
        &self,
        name: &str,
        reference: &str,
    ) -> anyhow::Result<(String, Vec<u8>)> {
        let what = format!("GET /v2/{name}/manifests/{reference}");
        let r = self
            .req(Method::GET, &format!("/v2/{name}/manifests/{reference}"))
            .header("Accept", MANIFEST_TYPES);
        let resp = self.send(r, &what).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("application/vnd.docker.distribution.manifest.v2+json")
            .to_owned();
        Ok((ct, resp.bytes().await?.to_vec()))
    }

    pub async fn put_manifest(
        &self,
        name: &str,
        tag: &str,
        media_type: &str,
        body: Vec<u8>,
    ) -> anyhow::Result<()> {
        let what = format!("PUT /v2/{name}/manifests/{tag}");
        let r = self
            .req(Method::PUT, &format!("/v2/{name}/manifests/{tag}"))
            .header("Content-Type", media_type)
            .body(body);
        let resp = self.send(r, &what).await?;
        if !resp.status().is_success() {
            return Err(self.fail(&what, resp).await);
        }
        Ok(())
    }

    /// Deletes a manifest by digest (which untags every tag pointing at it).
    pub async fn delete_manifest(&self, name: &str, digest: &str) -> anyhow::Result<Delete> {
        let what = format!("DELETE /v2/{name}/manifests/{digest}");
        let r = self.req(Method::DELETE, &format!("/v2/{name}/manifests/{digest}"));
        let resp = self.send(r, &what).await?;
        match resp.status() {
            s if s.is_success() => Ok(Delete::Done),
            StatusCode::NOT_FOUND => Ok(Delete::NotFound),
            StatusCode::METHOD_NOT_ALLOWED => Ok(Delete::Unsupported),
            _ => Err(self.fail(&what, resp).await),
        }
    }

    /// The repository's tags (empty when the repository does not exist).
    pub async fn tags(&self, name: &str) -> anyhow::Result<Vec<String>> {
        let what = format!("GET /v2/{name}/tags/list");
        let resp = self
            .send(
                self.req(Method::GET, &format!("/v2/{name}/tags/list")),
                &what,
            )
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Ok(vec![]),
            s if s.is_success() => {
                let v: serde_json::Value = resp.json().await?;
                Ok(v["tags"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|t| t.as_str().map(str::to_owned))
                            .collect()
                    })
                    .unwrap_or_default())
            }
            _ => Err(self.fail(&what, resp).await),
        }
    }
}
