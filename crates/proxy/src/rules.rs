//! Per-route rewrites, compiled once per table: header rules, path prefix stripping, custom
//! error pages.

use bytes::Bytes;
use gateway_model::{ErrorPage, HeaderRules};
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, Uri};
use std::collections::BTreeMap;

/// Header changes ready to apply: remove, then set, then add.
#[derive(Default, Debug)]
pub(crate) struct HeaderOps {
    remove: Box<[HeaderName]>,
    set: Box<[(HeaderName, HeaderValue)]>,
    add: Box<[(HeaderName, HeaderValue)]>,
}

fn pairs(map: &BTreeMap<String, String>, what: &str) -> Box<[(HeaderName, HeaderValue)]> {
    map.iter()
        .filter_map(|(k, v)| {
            match (
                HeaderName::from_bytes(k.as_bytes()),
                HeaderValue::from_str(v),
            ) {
                (Ok(k), Ok(v)) => Some((k, v)),
                _ => {
                    tracing::warn!(header = %k, "invalid header in {what} rule; skipped");
                    None
                }
            }
        })
        .collect()
}

impl HeaderOps {
    pub(crate) fn compile(rules: &HeaderRules) -> Self {
        HeaderOps {
            remove: rules
                .remove
                .iter()
                .filter_map(|n| HeaderName::from_bytes(n.as_bytes()).ok())
                .collect(),
            set: pairs(&rules.set, "set"),
            add: pairs(&rules.add, "add"),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    pub(crate) fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name, value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name, value.clone());
        }
    }
}

/// `uri` with `prefix` taken off its path (`/api/users?x` → `/users?x`; `/api` → `/`). The
/// route matched, so the path starts with the prefix.
pub(crate) fn strip_prefix(uri: &Uri, prefix: &str) -> Uri {
    let path = uri.path();
    let rest = match path.strip_prefix(prefix.trim_end_matches('/')) {
        Some(rest) => rest,
        None => return uri.clone(),
    };
    let mut pq = String::with_capacity(rest.len() + 1 + uri.query().map_or(0, |q| q.len() + 1));
    if !rest.starts_with('/') {
        pq.push('/');
    }
    pq.push_str(rest);
    if let Some(q) = uri.query() {
        pq.push('?');
        pq.push_str(q);
    }
    match PathAndQuery::try_from(pq) {
        Ok(pq) => Uri::from(pq),
        Err(_) => uri.clone(),
    }
}

/// A compiled custom error page.
#[derive(Debug)]
pub(crate) struct Page {
    pub(crate) status: Option<StatusCode>,
    pub(crate) content_type: HeaderValue,
    pub(crate) body: Bytes,
}

/// A route's custom pages for 502, 503 and 504.
#[derive(Default, Debug)]
pub(crate) struct ErrorPages([Option<Page>; 3]);

impl ErrorPages {
    pub(crate) fn compile(pages: &BTreeMap<String, ErrorPage>) -> Self {
        let mut out = ErrorPages::default();
        for (key, page) in pages {
            let slot = match key.as_str() {
                "502" => 0,
                "503" => 1,
                "504" => 2,
                _ => continue,
            };
            let Ok(content_type) = HeaderValue::from_str(&page.content_type) else {
                continue;
            };
            out.0[slot] = Some(Page {
                status: page.status.and_then(|s| StatusCode::from_u16(s).ok()),
                content_type,
                body: Bytes::from(page.body.clone()),
            });
        }
        out
    }

    pub(crate) fn get(&self, status: StatusCode) -> Option<&Page> {
        match status.as_u16() {
            502 => self.0[0].as_ref(),
            503 => self.0[1].as_ref(),
            504 => self.0[2].as_ref(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_is_stripped_on_the_segment() {
        let u = |s: &str| s.parse::<Uri>().unwrap();
        assert_eq!(strip_prefix(&u("/api/users?x=1"), "/api"), "/users?x=1");
        assert_eq!(strip_prefix(&u("/api"), "/api"), "/");
        assert_eq!(strip_prefix(&u("/api?q"), "/api"), "/?q");
        assert_eq!(strip_prefix(&u("/api/"), "/api/"), "/");
        assert_eq!(strip_prefix(&u("/api/x"), "/api/"), "/x");
        assert_eq!(strip_prefix(&u("/x/y"), "/"), "/x/y");
    }

    #[test]
    fn header_rules_remove_then_set_then_add() {
        let rules = HeaderRules {
            set: [("X-Env".to_string(), "prod".to_string())].into(),
            add: [("x-tag".to_string(), "b".to_string())].into(),
            remove: vec!["x-secret".into(), "x-tag".into()],
        };
        let ops = HeaderOps::compile(&rules);
        let mut h = HeaderMap::new();
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.append("x-env", HeaderValue::from_static("dev"));
        h.append("x-env", HeaderValue::from_static("test"));
        h.insert("x-tag", HeaderValue::from_static("a"));
        ops.apply(&mut h);
        assert!(h.get("x-secret").is_none());
        assert_eq!(h.get_all("x-env").iter().collect::<Vec<_>>(), ["prod"]);
        assert_eq!(h.get_all("x-tag").iter().collect::<Vec<_>>(), ["b"]);
        assert!(HeaderOps::compile(&HeaderRules::default()).is_empty());
    }
}
