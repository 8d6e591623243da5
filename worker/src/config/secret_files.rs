//! Secrets the way operators pass them: every secret setting also takes a file (`NAME_FILE`,
//! the convention of Docker and Kubernetes secrets), read once at start, its trailing newline
//! dropped. A secret given both ways is refused rather than one silently winning.

use std::path::Path;

use clap::parser::ValueSource;
use secrecy::SecretString;

use super::ConfigError;

/// One secret setting as parsed: its value, where clap found it, and its file form.
pub struct Secret<'a> {
    /// The setting's name, e.g. `CLERK_WEBHOOK_SECRET`; the file form is this plus `_FILE`.
    pub setting: &'static str,
    pub value: &'a mut SecretString,
    /// `None` or a default: not given by the operator.
    pub source: Option<ValueSource>,
    pub file: Option<&'a Path>,
}

impl Secret<'_> {
    /// Replaces the value with the file's content when the file form is set; refuses both.
    pub fn resolve(self) -> Result<(), ConfigError> {
        let given = matches!(
            self.source,
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        match (self.file, given) {
            (Some(_), true) => Err(ConfigError::SecretTwice {
                setting: self.setting,
            }),
            (Some(path), false) => {
                *self.value = read(self.setting, path)?;
                Ok(())
            }
            (None, _) => Ok(()),
        }
    }
}

/// The file's content without one trailing newline (`\n` or `\r\n`), as editors and
/// `kubectl create secret --from-file` leave it.
fn read(setting: &'static str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|err| ConfigError::SecretFile {
        setting,
        path: path.display().to_string(),
        reason: err.to_string(),
    })?;
    let trimmed = text.strip_suffix('\n').unwrap_or(&text);
    let trimmed = trimmed.strip_suffix('\r').unwrap_or(trimmed);
    Ok(SecretString::from(trimmed.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn resolve(source: Option<ValueSource>, file: Option<&Path>) -> Result<String, ConfigError> {
        let mut value = SecretString::from("from the setting");
        Secret {
            setting: "CLERK_SECRET_KEY",
            value: &mut value,
            source,
            file,
        }
        .resolve()?;
        Ok(value.expose_secret().to_owned())
    }

    fn file_with(content: &str) -> tempfile::NamedTempFile {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), content).unwrap();
        file
    }

    #[test]
    fn the_file_gives_the_secret_without_its_trailing_newline() {
        for content in ["sk_test_123\n", "sk_test_123\r\n", "sk_test_123"] {
            let file = file_with(content);
            assert_eq!(resolve(None, Some(file.path())).unwrap(), "sk_test_123");
        }
        let file = file_with("sk_test_123\n");
        let default = Some(ValueSource::DefaultValue);
        assert_eq!(resolve(default, Some(file.path())).unwrap(), "sk_test_123");
    }

    #[test]
    fn without_a_file_the_setting_stands() {
        let given = Some(ValueSource::EnvVariable);
        assert_eq!(resolve(given, None).unwrap(), "from the setting");
    }

    #[test]
    fn both_forms_are_refused_naming_the_setting() {
        let file = file_with("sk_test_123");
        for source in [ValueSource::EnvVariable, ValueSource::CommandLine] {
            let err = resolve(Some(source), Some(file.path())).unwrap_err();
            assert_eq!(
                err.to_string(),
                "CLERK_SECRET_KEY and CLERK_SECRET_KEY_FILE are both set: give the secret one way"
            );
        }
    }

    #[test]
    fn an_unreadable_file_is_refused_naming_the_setting_and_the_path() {
        let err = resolve(None, Some(Path::new("/nonexistent/key"))).unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with("CLERK_SECRET_KEY_FILE (/nonexistent/key) cannot be read"),
            "{message}"
        );
        assert_eq!(err.exit_code(), 2);
    }
}
