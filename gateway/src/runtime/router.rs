//! Routing: endpoint paths and the gateway's own paths in one `matchit` tree, plus
//! KrakenD's (gin's) fallbacks: 405 with `Allow`, and redirects to the path with or
//! without a trailing slash or with the right letter case.

use http::Method;
use http::header::HeaderValue;
use serde_json::Value;

use super::{CompileError, Flags};
use crate::config::Service;
use crate::proxy::pipeline::{Common, Pipeline};

/// What a path leads to.
enum RouteTarget {
    Endpoints { methods: Vec<(Method, Pipeline)>, allow: HeaderValue },
    Health,
    Debug,
    Echo,
}

struct Route {
    /// The path as declared, used to rebuild a case-corrected path.
    template: String,
    target: RouteTarget,
}

/// The handler chosen for a request.
pub enum Target<'a> {
    Endpoint(&'a Pipeline),
    Health,
    Debug,
    Echo,
}

/// A matched route with its parameter values, in path order.
pub struct Found<'a> {
    pub target: Target<'a>,
    pub params: Vec<&'a str>,
}

/// The outcome of routing one request.
pub enum Lookup<'a> {
    Found(Found<'a>),
    /// Permanent or temporary redirect to this path.
    Redirect(String),
    MethodNotAllowed(HeaderValue),
    /// `auto_options`: the methods a path accepts.
    Options(HeaderValue),
    NotFound,
}

pub struct Router {
    exact: matchit::Router<usize>,
    /// The same paths lower-cased, to find the route a wrongly-cased path meant.
    folded: matchit::Router<usize>,
    routes: Vec<Route>,
    redirect_trailing_slash: bool,
    redirect_fixed_path: bool,
    method_not_allowed: bool,
    auto_options: bool,
    pub error_body_404: Option<bytes::Bytes>,
    pub error_body_405: Option<bytes::Bytes>,
}

impl Router {
    pub fn compile(
        service: &Service,
        flags: Flags,
        common: &Common,
        policies: &crate::policy::ServicePolicies,
    ) -> Result<Self, CompileError> {
        let mut routes: Vec<Route> = Vec::new();
        let add = |routes: &mut Vec<Route>, path: &str, target: RouteTarget| {
            routes.push(Route { template: path.to_owned(), target });
        };
        let opts = &service.router;
        if !opts.disable_health {
            add(&mut routes, &opts.health_path, RouteTarget::Health);
        }
        if service.debug_endpoint || flags.debug {
            add(&mut routes, "/__debug/", RouteTarget::Debug);
            add(&mut routes, "/__debug/{*rest}", RouteTarget::Debug);
        }
        if service.echo_endpoint {
            add(&mut routes, "/__echo/", RouteTarget::Echo);
            add(&mut routes, "/__echo/{*rest}", RouteTarget::Echo);
        }
        let shared_cache = std::sync::OnceLock::new();
        for (i, e) in service.endpoints.iter().enumerate() {
            let id = format!("{} {}", e.method, e.path);
            let guards = crate::policy::Guards::build(&e.extra_config, &format!("endpoints[{i}]"), &id, policies)
                .map_err(CompileError::Policy)?;
            let signer = match e.extra_config.get("auth/signer") {
                Some(v) => {
                    let path = format!("endpoints[{i}].extra_config.auth/signer");
                    let settings = crate::policy::signer::SignerSettings::parse(v, &path).map_err(|p| {
                        CompileError::Policy(p.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))
                    })?;
                    Some(crate::policy::signer::Signer::build(settings).map_err(CompileError::Policy)?)
                }
                None => None,
            };
            let pipeline = Pipeline::compile(e, &service.host, common.clone(), guards, signer, &shared_cache);
            match routes.iter_mut().find(|r| r.template == e.path) {
                Some(Route { target: RouteTarget::Endpoints { methods, .. }, .. }) => {
                    methods.push((e.method.clone(), pipeline))
                }
                Some(_) => {
                    return Err(CompileError::Route { path: e.path.clone(), reason: "reserved by the gateway".into() });
                }
                None => add(
                    &mut routes,
                    &e.path,
                    RouteTarget::Endpoints {
                        methods: vec![(e.method.clone(), pipeline)],
                        allow: HeaderValue::from_static(""),
                    },
                ),
            }
        }
        let mut exact = matchit::Router::new();
        let mut folded = matchit::Router::new();
        for (i, route) in routes.iter_mut().enumerate() {
            if let RouteTarget::Endpoints { methods, allow } = &mut route.target {
                let mut names: Vec<&str> = methods.iter().map(|(m, _)| m.as_str()).collect();
                if opts.auto_options && !names.contains(&"OPTIONS") {
                    names.push("OPTIONS");
                }
                *allow = HeaderValue::from_str(&names.join(", ")).unwrap_or_else(|_| HeaderValue::from_static(""));
            }
            let params = crate::config::path_params(&route.template).len();
            if params > crate::config::MAX_PATH_PARAMS {
                let reason = format!("{params} parameters; at most {} are allowed", crate::config::MAX_PATH_PARAMS);
                return Err(CompileError::Route { path: route.template.clone(), reason });
            }
            exact
                .insert(route.template.clone(), i)
                .map_err(|e| CompileError::Route { path: route.template.clone(), reason: e.to_string() })?;
            // Two paths differing only in case cannot both be found case-insensitively;
            // the first keeps the folded slot, the other is still routed exactly.
            let _ = folded.insert(fold_template(&route.template), i);
        }
        let json = |v: &Option<Value>| v.as_ref().and_then(|v| serde_json::to_vec(v).ok()).map(bytes::Bytes::from);
        Ok(Self {
            exact,
            folded,
            routes,
            redirect_trailing_slash: !opts.disable_redirect_trailing_slash,
            redirect_fixed_path: !opts.disable_redirect_fixed_path,
            method_not_allowed: !opts.disable_handle_method_not_allowed,
            auto_options: opts.auto_options,
            error_body_404: json(&opts.error_body_404),
            error_body_405: json(&opts.error_body_405),
        })
    }

    /// Makes endpoints that `previous` also had keep their rate-limit buckets, breakers
    /// and caches where the settings did not change ([`Pipeline::adopt_state`]).
    pub fn adopt_state(&mut self, previous: &Router) {
        for route in &mut self.routes {
            let RouteTarget::Endpoints { methods, .. } = &mut route.target else { continue };
            let old = previous.routes.iter().find_map(|r| match &r.target {
                RouteTarget::Endpoints { methods, .. } if r.template == route.template => Some(methods),
                _ => None,
            });
            let Some(old) = old else { continue };
            for (method, pipeline) in methods.iter_mut() {
                if let Some((_, same)) = old.iter().find(|(m, _)| m == method) {
                    pipeline.adopt_state(same);
                }
            }
        }
    }

    /// Makes endpoints that `previous` also had keep counting into its counters, so a
    /// reload or a new bundle does not reset them (and loses nothing between exports).
    pub fn adopt_stats(&mut self, previous: &crate::telemetry::Registry) {
        for route in &mut self.routes {
            if let RouteTarget::Endpoints { methods, .. } = &mut route.target {
                for (method, pipeline) in methods.iter_mut() {
                    let same = previous
                        .endpoints
                        .iter()
                        .find(|s| s.route() == route.template && s.method() == method.as_str());
                    if let Some(stats) = same {
                        pipeline.adopt_stats(stats.clone());
                    }
                    pipeline.adopt_backend_stats(&previous.backends);
                }
            }
        }
    }

    /// The counters of every endpoint and breaker, for the runtime's exporter.
    pub fn registry(&self) -> crate::telemetry::Registry {
        let mut registry = crate::telemetry::Registry::default();
        for route in &self.routes {
            if let RouteTarget::Endpoints { methods, .. } = &route.target {
                for (method, pipeline) in methods {
                    registry.endpoints.push(pipeline.stats().clone());
                    registry.backends.extend(pipeline.backend_stats().cloned());
                    for (i, b) in pipeline.breakers().enumerate() {
                        registry.breakers.push((format!("{method} {} backend {i}", route.template), b.clone()));
                    }
                }
            }
        }
        registry
    }

    pub fn lookup<'a>(&'a self, path: &'a str, method: &Method) -> Lookup<'a> {
        if let Ok(m) = self.exact.at(path) {
            let route = &self.routes[*m.value];
            let params: Vec<&'a str> = m.params.iter().map(|(_, v)| v).collect();
            let target = match &route.target {
                RouteTarget::Health if method == Method::GET || method == Method::HEAD => Target::Health,
                RouteTarget::Health => {
                    return self.not_allowed(HeaderValue::from_static("GET, HEAD"));
                }
                RouteTarget::Debug => Target::Debug,
                RouteTarget::Echo => Target::Echo,
                RouteTarget::Endpoints { methods, allow } => match methods.iter().find(|(m, _)| m == method) {
                    Some((_, p)) => Target::Endpoint(p),
                    None if self.auto_options && method == Method::OPTIONS => {
                        return Lookup::Options(allow.clone());
                    }
                    None => return self.not_allowed(allow.clone()),
                },
            };
            return Lookup::Found(Found { target, params });
        }
        if method == Method::CONNECT || path == "/" {
            return Lookup::NotFound;
        }
        if self.redirect_trailing_slash {
            let toggled = match path.strip_suffix('/') {
                Some(p) => p.to_owned(),
                None => format!("{path}/"),
            };
            if self.exact.at(&toggled).is_ok() {
                return Lookup::Redirect(toggled);
            }
        }
        if self.redirect_fixed_path
            && let Some(fixed) = self.fixed_path(path)
            && fixed != path
        {
            return Lookup::Redirect(fixed);
        }
        Lookup::NotFound
    }

    fn not_allowed(&self, allow: HeaderValue) -> Lookup<'_> {
        if self.method_not_allowed { Lookup::MethodNotAllowed(allow) } else { Lookup::NotFound }
    }

    /// The declared path a cleaned, case-insensitive match of `path` leads to, with
    /// the request's own parameter values kept as they were sent.
    fn fixed_path(&self, path: &str) -> Option<String> {
        let cleaned = clean(path);
        let candidates = [cleaned.clone(), toggle_slash(&cleaned)];
        for candidate in candidates {
            let lowered = candidate.to_ascii_lowercase();
            let Ok(m) = self.folded.at(&lowered) else {
                continue;
            };
            let template = &self.routes[*m.value].template;
            let rebuilt = rebuild(template, &candidate);
            if self.exact.at(&rebuilt).is_ok() {
                return Some(rebuilt);
            }
        }
        None
    }
}

fn toggle_slash(p: &str) -> String {
    match p.strip_suffix('/') {
        Some(s) if !s.is_empty() => s.to_owned(),
        Some(_) => p.to_owned(),
        None => format!("{p}/"),
    }
}

/// Lower-cases the static parts of a route template, keeping parameter names.
fn fold_template(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut in_param = false;
    for c in template.chars() {
        match c {
            '{' => in_param = true,
            '}' => in_param = false,
            _ => {}
        }
        out.push(if in_param { c } else { c.to_ascii_lowercase() });
    }
    out
}

/// Takes static segments from the template and parameter segments from the request.
fn rebuild(template: &str, path: &str) -> String {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    let mut out = Vec::with_capacity(p.len());
    for (i, seg) in p.iter().enumerate() {
        match t.get(i) {
            Some(ts) if ts.starts_with("{*") => {
                out.extend_from_slice(&p[i..]);
                break;
            }
            Some(ts) if !ts.contains('{') => out.push(*ts),
            _ => out.push(*seg),
        }
    }
    out.join("/")
}

/// Collapses `//`, `.` and `..` the way Go's `path.Clean` does, keeping a final `/`.
fn clean(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        match seg {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            s => parts.push(s),
        }
    }
    let mut out = String::with_capacity(path.len());
    for p in &parts {
        out.push('/');
        out.push_str(p);
    }
    if out.is_empty() || (path.ends_with('/') && !out.ends_with('/')) {
        out.push('/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clean_and_rebuild() {
        assert_eq!(clean("/a//b/./c/../d/"), "/a/b/d/");
        assert_eq!(clean("/.."), "/");
        assert_eq!(rebuild("/Users/{id}/Posts", "/users/AbC/posts"), "/Users/AbC/Posts");
        assert_eq!(fold_template("/Users/{Id}"), "/users/{Id}");
    }
}
