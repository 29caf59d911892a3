//! Who may do what through the client API: the roles a token carries and the identity a
//! call is made under. The coordinator authenticates (a bearer token, its hash looked up);
//! every handler then asks [`Principal::may`] for the one role its call needs.

use std::fmt;
use std::str::FromStr;

/// A role a token grants. Every role includes `viewer`; `admin` includes all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ApiRole {
    /// Read tasks, steps, logs, metrics, workflows, graphs and agents.
    Viewer,
    /// Create, pause, resume, cancel and retry tasks; change a step's parameters.
    Operator,
    /// Approve or reject a step held for approval.
    Approver,
    /// Apply workflows and edit graphs: these run code on the agents' hosts.
    Author,
    /// Tokens, the audit log and agents.
    Admin,
}

impl ApiRole {
    pub const ALL: [ApiRole; 5] = [
        ApiRole::Viewer,
        ApiRole::Operator,
        ApiRole::Approver,
        ApiRole::Author,
        ApiRole::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ApiRole::Viewer => "viewer",
            ApiRole::Operator => "operator",
            ApiRole::Approver => "approver",
            ApiRole::Author => "author",
            ApiRole::Admin => "admin",
        }
    }
}

impl fmt::Display for ApiRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AccessError {
    #[error("unknown role `{0}` (roles: viewer, operator, approver, author, admin)")]
    UnknownRole(String),
    #[error("a token needs at least one role")]
    NoRoles,
    #[error("token name `{0}` must be 1-100 letters, digits, '.', '@', '_' or '-'")]
    BadName(String),
}

impl FromStr for ApiRole {
    type Err = AccessError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ApiRole::ALL
            .into_iter()
            .find(|r| r.as_str() == s.trim())
            .ok_or_else(|| AccessError::UnknownRole(s.trim().to_owned()))
    }
}

/// Parses `operator,approver` (commas or spaces) into a sorted, de-duplicated list.
pub fn parse_roles(s: &str) -> Result<Vec<ApiRole>, AccessError> {
    let mut roles = s
        .split([',', ' '])
        .filter(|p| !p.trim().is_empty())
        .map(str::parse)
        .collect::<Result<Vec<ApiRole>, _>>()?;
    roles.sort();
    roles.dedup();
    if roles.is_empty() {
        return Err(AccessError::NoRoles);
    }
    Ok(roles)
}

/// The stored form of a role list: `operator,approver`.
pub fn roles_to_string(roles: &[ApiRole]) -> String {
    roles
        .iter()
        .map(|r| r.as_str())
        .collect::<Vec<_>>()
        .join(",")
}

/// Checks a token's name (the identity the audit log records).
pub fn check_token_name(name: &str) -> Result<(), AccessError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 100
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '@' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(AccessError::BadName(name.to_owned()))
    }
}

/// The authenticated caller of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name: what the audit log and approvals record.
    pub name: String,
    pub roles: Vec<ApiRole>,
}

impl Principal {
    /// The caller when tokens are off (a coordinator on loopback without `auth`): every
    /// role, recorded as `local`.
    pub fn local() -> Self {
        Principal {
            name: "local".into(),
            roles: vec![ApiRole::Admin],
        }
    }

    /// Whether this caller holds `role` (every role reads; `admin` does everything).
    pub fn may(&self, role: ApiRole) -> bool {
        role == ApiRole::Viewer
            || self.roles.contains(&role)
            || self.roles.contains(&ApiRole::Admin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_parse_sort_and_refuse_unknown_ones() {
        assert_eq!(
            parse_roles("approver, operator,operator").ok(),
            Some(vec![ApiRole::Operator, ApiRole::Approver])
        );
        assert_eq!(
            parse_roles("root"),
            Err(AccessError::UnknownRole("root".into()))
        );
        assert_eq!(parse_roles(" , "), Err(AccessError::NoRoles));
    }

    #[test]
    fn each_role_grants_only_itself_and_reading() {
        let viewer = Principal {
            name: "v".into(),
            roles: vec![ApiRole::Viewer],
        };
        assert!(viewer.may(ApiRole::Viewer));
        for r in [
            ApiRole::Operator,
            ApiRole::Approver,
            ApiRole::Author,
            ApiRole::Admin,
        ] {
            assert!(!viewer.may(r), "{r}");
        }
        let op = Principal {
            name: "o".into(),
            roles: vec![ApiRole::Operator],
        };
        assert!(
            op.may(ApiRole::Operator) && !op.may(ApiRole::Approver) && !op.may(ApiRole::Author)
        );
        assert!(Principal::local().may(ApiRole::Author));
    }

    #[test]
    fn token_names_are_plain() {
        assert!(check_token_name("alice@example.com").is_ok());
        assert!(check_token_name("").is_err());
        assert!(check_token_name("a b").is_err());
        assert!(check_token_name("x\n").is_err());
    }
}
