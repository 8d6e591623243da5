//! The name of a user's workspace, as the schema's `valid_workspace_name` check accepts it.

use super::Invalid;

/// A workspace name the `valid_workspace_name` constraint accepts: not blank, at most 100
/// characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkspaceName(String);

impl WorkspaceName {
    const MAX_CHARS: usize = 100;

    pub fn parse(raw: &str) -> Result<Self, Invalid> {
        if raw.trim().is_empty() || raw.chars().count() > Self::MAX_CHARS {
            return Err(Invalid::WorkspaceName(raw.to_owned()));
        }
        Ok(Self(raw.to_owned()))
    }
}

impl Default for WorkspaceName {
    /// The product's name for the workspace every user gets.
    fn default() -> Self {
        Self("My Workspace".to_owned())
    }
}

impl AsRef<str> for WorkspaceName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_is_my_workspace() {
        assert_eq!(WorkspaceName::default().as_ref(), "My Workspace");
    }

    #[test]
    fn names_up_to_one_hundred_characters_are_accepted() {
        assert!(WorkspaceName::parse("W").is_ok());
        assert!(WorkspaceName::parse(&"ü".repeat(100)).is_ok());
    }

    #[test]
    fn blank_and_long_names_are_rejected() {
        for raw in ["", "   ", &"x".repeat(101)] {
            let err = WorkspaceName::parse(raw).unwrap_err();
            assert_eq!(err, Invalid::WorkspaceName(raw.to_owned()), "{raw}");
        }
    }
}
