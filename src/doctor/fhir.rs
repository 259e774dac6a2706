//! The FHIR endpoint (`[fhir] base_url`): `GET {base_url}/metadata` must answer a
//! CapabilityStatement, as metadata_check and the rollout's version gates expect.

use std::time::Duration;

use crate::infra::http;
use crate::report::views::doctor::Finding;
use crate::target::Target;

use super::within;

const C: &str = "fhir";

pub async fn probe(target: &Target, timeout: Duration) -> Finding {
    let Some(f) = &target.fhir else {
        return Finding::skipped(
            C,
            "no [fhir] in the target: metadata_check steps and the rollout's gates cannot run",
        );
    };
    let url = format!("{}/metadata", f.base_url.trim_end_matches('/'));
    let client = match http::client(timeout) {
        Ok(c) => c,
        Err(e) => return Finding::problem(C, format!("{e:#}"), "report this as a ferry bug"),
    };
    let what = format!("GET {url}");
    within(C, timeout, &what, metadata(client, url)).await
}

async fn metadata(client: reqwest::Client, url: String) -> Finding {
    let fix_url = "set [fhir] base_url to the FHIR base, the URL that `/metadata` is under (e.g. https://host/fhir)";
    let resp = match client
        .get(&url)
        .header("Accept", "application/fhir+json")
        .send()
        .await
    {
        Ok(r) => r,
        Err(e) => {
            let mut why = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(inner) = src {
                why = format!("{why}: {inner}");
                src = inner.source();
            }
            return Finding::problem(
                C,
                format!("GET {url}: no answer: {why}"),
                format!("is HAPI (behind nginx) up? If so, {fix_url}"),
            );
        }
    };
    let status = resp.status();
    if !status.is_success() {
        return Finding::problem(C, format!("GET {url} answered {status}"), fix_url);
    }
    let body: serde_json::Value = match resp.json().await {
        Ok(v) => v,
        Err(e) => {
            return Finding::problem(
                C,
                format!("GET {url} answered {status} but not JSON: {e}"),
                fix_url,
            );
        }
    };
    if body["resourceType"] != "CapabilityStatement" {
        return Finding::problem(
            C,
            format!(
                "GET {url} answered a {} instead of a CapabilityStatement",
                body["resourceType"]
                    .as_str()
                    .unwrap_or("document without resourceType")
            ),
            fix_url,
        );
    }
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_owned();
    Finding::ok(
        C,
        format!(
            "GET {url}: CapabilityStatement, FHIR {}, {} {}",
            s(&body["fhirVersion"]),
            s(&body["software"]["name"]),
            s(&body["software"]["version"])
        ),
    )
}
