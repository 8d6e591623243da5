//! First and last names: optional and cosmetic, so too long is cut rather than refused.

/// A first or last name: non-blank, at most 50 characters (characters, not bytes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PersonName(String);

/// What [`PersonName::from_clerk`] made of a raw name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NameInput {
    /// Null, empty or only whitespace: stored as NULL.
    Absent,
    Kept(PersonName),
    /// Longer than the limit: cut, and the caller logs a warning. A cosmetic field never costs a
    /// user their workspace.
    Truncated(PersonName),
}

impl PersonName {
    pub const MAX_CHARS: usize = 50;

    pub fn from_clerk(raw: Option<&str>) -> NameInput {
        let trimmed = raw.map(str::trim).unwrap_or_default();
        if trimmed.is_empty() {
            return NameInput::Absent;
        }
        match trimmed.char_indices().nth(Self::MAX_CHARS) {
            None => NameInput::Kept(Self(trimmed.to_owned())),
            Some((cut, _)) => NameInput::Truncated(Self(trimmed[..cut].trim_end().to_owned())),
        }
    }
}

impl NameInput {
    pub fn into_option(self) -> Option<PersonName> {
        match self {
            Self::Absent => None,
            Self::Kept(name) | Self::Truncated(name) => Some(name),
        }
    }
}

impl AsRef<str> for PersonName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_names_are_kept_trimmed() {
        let name = PersonName::from_clerk(Some("  López García "))
            .into_option()
            .unwrap();
        assert_eq!(name.as_ref(), "López García");
    }

    #[test]
    fn null_empty_and_blank_names_are_absent() {
        for raw in [None, Some(""), Some("   ")] {
            assert_eq!(PersonName::from_clerk(raw), NameInput::Absent);
        }
    }

    #[test]
    fn fifty_characters_are_kept_whole() {
        let raw = "é".repeat(50);
        assert!(matches!(
            PersonName::from_clerk(Some(&raw)),
            NameInput::Kept(_)
        ));
    }

    #[test]
    fn long_unicode_names_are_cut_at_fifty_characters_not_bytes() {
        let raw = "ñ".repeat(49) + "日本語";
        let NameInput::Truncated(name) = PersonName::from_clerk(Some(&raw)) else {
            panic!("expected a truncation");
        };
        assert_eq!(name.as_ref().chars().count(), 50);
        assert_eq!(name.as_ref(), "ñ".repeat(49) + "日");
    }

    #[test]
    fn emoji_at_the_boundary_are_not_split() {
        let raw = "👩‍💻".repeat(20);
        let name = PersonName::from_clerk(Some(&raw)).into_option().unwrap();
        assert!(name.as_ref().chars().count() <= 50);
        assert!(raw.starts_with(name.as_ref()));
    }
}
