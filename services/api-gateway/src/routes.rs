//! The route table: which `/api/v1/<service>/<rest>` paths are public, which
//! need any authenticated caller, and which need one of a set of roles.
//!
//! The table is data ([`ROUTE_TABLE`]); the first matching rule wins. A
//! pattern is `<service>/<path>`; a trailing `*` makes it a prefix match, and
//! `*` alone as the service matches every service. The final catch-all makes
//! every other route require authentication, so a new upstream is never public
//! by accident.
//!
//! | pattern | access |
//! |---|---|
//! | `user-management/auth/login` | public |
//! | `user-management/auth/register` | public |
//! | `user-management/auth/refresh` | public |
//! | `user-management/.well-known/jwks.json` | public |
//! | `user-management/users*` | admin |
//! | `security/*` | admin |
//! | `analytics/*` | analyst, admin |
//! | `ai-assistant/*` | developer, admin, analyst, viewer |
//! | `1c-integration/*` | developer, admin |
//! | `*` (everything else) | any authenticated caller |

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No authentication; the caller is rate-limited per IP only.
    Public,
    /// Any valid JWT or API key.
    Authenticated,
    /// A caller holding at least one of these roles.
    Roles(&'static [&'static str]),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rule {
    pub pattern: &'static str,
    pub access: Access,
}

pub const ROUTE_TABLE: &[Rule] = &[
    Rule {
        pattern: "user-management/auth/login",
        access: Access::Public,
    },
    Rule {
        pattern: "user-management/auth/register",
        access: Access::Public,
    },
    Rule {
        pattern: "user-management/auth/refresh",
        access: Access::Public,
    },
    Rule {
        pattern: "user-management/.well-known/jwks.json",
        access: Access::Public,
    },
    Rule {
        pattern: "user-management/users*",
        access: Access::Roles(&["admin"]),
    },
    Rule {
        pattern: "security/*",
        access: Access::Roles(&["admin"]),
    },
    Rule {
        pattern: "analytics/*",
        access: Access::Roles(&["analyst", "admin"]),
    },
    Rule {
        pattern: "ai-assistant/*",
        access: Access::Roles(&["developer", "admin", "analyst", "viewer"]),
    },
    Rule {
        pattern: "1c-integration/*",
        access: Access::Roles(&["developer", "admin"]),
    },
    Rule {
        pattern: "*",
        access: Access::Authenticated,
    },
];

/// A request path split into its upstream service and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target<'a> {
    pub service: &'a str,
    /// Path to send upstream, always starting with `/`.
    pub upstream_path: String,
    pub access: Access,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RouteError {
    /// Not under `/api/v1/<service>/`.
    NotFound,
    /// Dot segments, empty segments or encoded separators: refused so that
    /// the path an upstream resolves is the path the table matched.
    BadPath,
}

const PREFIX: &str = "/api/v1/";

/// Splits `/api/v1/<service>/<rest>` and finds the rule for it.
pub fn resolve(path: &str) -> Result<Target<'_>, RouteError> {
    resolve_with(ROUTE_TABLE, path)
}

pub fn resolve_with<'a>(table: &[Rule], path: &'a str) -> Result<Target<'a>, RouteError> {
    let rel = path.strip_prefix(PREFIX).ok_or(RouteError::NotFound)?;
    let (service, rest) = match rel.find('/') {
        Some(i) => (&rel[..i], &rel[i + 1..]),
        None => (rel, ""),
    };
    if service.is_empty() {
        return Err(RouteError::NotFound);
    }
    check_segments(rel)?;
    let access = table
        .iter()
        .find(|r| matches(r.pattern, service, rest))
        .map(|r| r.access)
        .unwrap_or(Access::Authenticated);
    Ok(Target {
        service,
        upstream_path: format!("/{rest}"),
        access,
    })
}

fn check_segments(rel: &str) -> Result<(), RouteError> {
    let segments: Vec<&str> = rel.split('/').collect();
    let last = segments.len() - 1;
    for (i, seg) in segments.iter().enumerate() {
        if seg.is_empty() && i != last {
            return Err(RouteError::BadPath);
        }
        let lower = seg.to_ascii_lowercase();
        if lower.contains("%2f") || lower.contains("%5c") || seg.contains('\\') {
            return Err(RouteError::BadPath);
        }
        let decoded = lower.replace("%2e", ".");
        if decoded == "." || decoded == ".." {
            return Err(RouteError::BadPath);
        }
    }
    Ok(())
}

fn matches(pattern: &str, service: &str, rest: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    let (p_service, p_rest) = pattern.split_once('/').unwrap_or((pattern, ""));
    if p_service != service {
        return false;
    }
    match p_rest.strip_suffix('*') {
        Some(prefix) => rest.starts_with(prefix),
        None => rest == p_rest || rest.strip_suffix('/') == Some(p_rest),
    }
}

/// Whether a caller with `roles` may use a route with `access`.
pub fn allowed(access: Access, roles: &[String]) -> bool {
    match access {
        Access::Public | Access::Authenticated => true,
        Access::Roles(need) => roles.iter().any(|r| need.contains(&r.as_str())),
    }
}

/// `user-management` → `SERVICE_URL_USER_MANAGEMENT` (the contract's naming).
pub fn env_var_for(service: &str) -> String {
    format!(
        "SERVICE_URL_{}",
        service.to_ascii_uppercase().replace('-', "_")
    )
}

/// `SERVICE_URL_USER_MANAGEMENT` → `user-management`.
pub fn service_for_env_var(var: &str) -> Option<String> {
    let name = var.strip_prefix("SERVICE_URL_")?;
    if name.is_empty() {
        return None;
    }
    Some(name.to_ascii_lowercase().replace('_', "-"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(path: &str) -> Access {
        resolve(path).unwrap().access
    }

    fn roles(r: &[&str]) -> Vec<String> {
        r.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn public_auth_routes() {
        for p in [
            "/api/v1/user-management/auth/login",
            "/api/v1/user-management/auth/register",
            "/api/v1/user-management/auth/refresh",
            "/api/v1/user-management/auth/refresh/",
            "/api/v1/user-management/.well-known/jwks.json",
        ] {
            assert_eq!(access(p), Access::Public, "{p}");
        }
        assert_eq!(
            access("/api/v1/user-management/auth/logout"),
            Access::Authenticated
        );
        assert_eq!(
            access("/api/v1/user-management/auth/login2"),
            Access::Authenticated
        );
        assert_eq!(access("/api/v1/user-management/me"), Access::Authenticated);
    }

    #[test]
    fn role_routes() {
        assert_eq!(
            access("/api/v1/user-management/users"),
            Access::Roles(&["admin"])
        );
        assert_eq!(
            access("/api/v1/user-management/users/42/roles"),
            Access::Roles(&["admin"])
        );
        assert_eq!(access("/api/v1/security/audit"), Access::Roles(&["admin"]));
        assert_eq!(
            access("/api/v1/analytics/reports?x=1"),
            Access::Roles(&["analyst", "admin"])
        );
        assert!(matches!(
            access("/api/v1/ai-assistant/chat"),
            Access::Roles(r) if r.contains(&"viewer")
        ));
        assert_eq!(access("/api/v1/other-svc/x"), Access::Authenticated);
    }

    #[test]
    fn split_service_and_rest() {
        let t = resolve("/api/v1/analytics/reports/7").unwrap();
        assert_eq!(t.service, "analytics");
        assert_eq!(t.upstream_path, "/reports/7");
        let t = resolve("/api/v1/analytics").unwrap();
        assert_eq!(t.upstream_path, "/");
        assert_eq!(resolve("/api/v2/x/y"), Err(RouteError::NotFound));
        assert_eq!(resolve("/api/v1/"), Err(RouteError::NotFound));
        assert_eq!(resolve("/health"), Err(RouteError::NotFound));
    }

    #[test]
    fn traversal_is_refused() {
        for p in [
            "/api/v1/user-management/auth/login/../../users",
            "/api/v1/user-management/auth/login/%2e%2e/%2E%2E/users",
            "/api/v1/user-management/auth/login%2f..%2fusers",
            "/api/v1/user-management//users",
            "/api/v1/user-management/./users",
            "/api/v1/user-management/auth\\..\\users",
        ] {
            assert_eq!(resolve(p), Err(RouteError::BadPath), "{p}");
        }
    }

    #[test]
    fn role_checks() {
        let admin_only = Access::Roles(&["admin"]);
        assert!(allowed(admin_only, &roles(&["viewer", "admin"])));
        assert!(!allowed(admin_only, &roles(&["viewer"])));
        assert!(!allowed(admin_only, &[]));
        assert!(allowed(Access::Authenticated, &[]));
    }

    #[test]
    fn env_var_names() {
        assert_eq!(
            env_var_for("user-management"),
            "SERVICE_URL_USER_MANAGEMENT"
        );
        assert_eq!(env_var_for("1c-integration"), "SERVICE_URL_1C_INTEGRATION");
        assert_eq!(
            service_for_env_var("SERVICE_URL_1C_INTEGRATION").as_deref(),
            Some("1c-integration")
        );
        assert_eq!(service_for_env_var("SERVICE_URL_"), None);
        assert_eq!(service_for_env_var("PATH"), None);
    }
}
