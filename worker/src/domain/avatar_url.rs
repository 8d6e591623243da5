//! The user's picture URL, kept only when it is a usable http(s) URL.

use url::Url;

/// An absolute http(s) URL for the user's picture.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AvatarUrl(Url);

impl AvatarUrl {
    const MAX_LEN: usize = 2048;

    /// `None` when the value is not a usable URL: the caller stores NULL and logs a warning,
    /// because a picture is never worth a user's workspace.
    pub fn parse(raw: &str) -> Option<Self> {
        if raw.len() > Self::MAX_LEN {
            return None;
        }
        let url = Url::parse(raw.trim()).ok()?;
        matches!(url.scheme(), "http" | "https")
            .then_some(url)
            .filter(Url::has_host)
            .map(Self)
    }
}

impl AsRef<str> for AvatarUrl {
    fn as_ref(&self) -> &str {
        self.0.as_str()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clerk_image_urls_are_accepted() {
        let raw = "https://img.clerk.com/eyJ0eXBlIjoicHJveHkifQ";
        assert_eq!(AvatarUrl::parse(raw).unwrap().as_ref(), raw);
    }

    #[test]
    fn non_urls_and_other_schemes_are_refused() {
        for raw in [
            "",
            "not a url",
            "/relative/path",
            "javascript:alert(1)",
            "ftp://x.io/a.png",
        ] {
            assert!(AvatarUrl::parse(raw).is_none(), "{raw}");
        }
        assert!(AvatarUrl::parse(&format!("https://x.io/{}", "a".repeat(2048))).is_none());
    }
}
