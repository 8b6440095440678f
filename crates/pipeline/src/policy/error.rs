//! Policy load errors with `origin:line:col` positions, from Cedar's miette diagnostics.

use std::fmt;

use miette::Diagnostic;

/// Why a policy set was rejected: one or more positioned messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    /// Where the policy text came from (a file path, `policies/default.cedar`, ...).
    pub origin: String,
    pub diagnostics: Vec<PolicyDiagnostic>,
}

/// One problem, at a 1-based line and column (in characters) when known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyDiagnostic {
    pub line: Option<usize>,
    pub column: Option<usize>,
    pub message: String,
}

impl std::error::Error for PolicyError {}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.diagnostics.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            match (d.line, d.column) {
                (Some(line), Some(col)) => {
                    write!(f, "{}:{line}:{col}: {}", self.origin, d.message)?
                }
                _ => write!(f, "{}: {}", self.origin, d.message)?,
            }
        }
        Ok(())
    }
}

impl PolicyError {
    pub(super) fn new(origin: &str, diagnostics: Vec<PolicyDiagnostic>) -> Self {
        PolicyError {
            origin: origin.to_string(),
            diagnostics,
        }
    }

    /// A single message without a position (I/O errors and the like).
    pub(super) fn message(origin: &str, message: impl Into<String>) -> Self {
        Self::new(
            origin,
            vec![PolicyDiagnostic {
                line: None,
                column: None,
                message: message.into(),
            }],
        )
    }
}

impl PolicyDiagnostic {
    /// Converts a Cedar diagnostic whose spans are byte offsets into `src`.
    pub(super) fn from_miette(src: &str, diag: &dyn Diagnostic) -> Self {
        let offset = diag
            .labels()
            .and_then(|mut labels| labels.next())
            .map(|label| label.offset());
        let mut message = diag.to_string();
        if let Some(help) = diag.help() {
            message.push_str(&format!(" (help: {help})"));
        }
        let (line, column) = match offset {
            Some(offset) => {
                let (l, c) = line_col(src, offset);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        PolicyDiagnostic {
            line,
            column,
            message,
        }
    }

    /// A message positioned at the first occurrence of `needle` in `src`.
    pub(super) fn at_text(src: &str, needle: &str, message: String) -> Self {
        Self::at_offset(src, src.find(needle), message)
    }

    /// A message positioned at the last occurrence of `needle` in `src`.
    pub(super) fn at_last_text(src: &str, needle: &str, message: String) -> Self {
        Self::at_offset(src, src.rfind(needle), message)
    }

    fn at_offset(src: &str, offset: Option<usize>, message: String) -> Self {
        let (line, column) = match offset {
            Some(offset) => {
                let (l, c) = line_col(src, offset);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        PolicyDiagnostic {
            line,
            column,
            message,
        }
    }
}

/// 1-based line and column (in characters) of byte `offset` in `src`.
pub(super) fn line_col(src: &str, offset: usize) -> (usize, usize) {
    let mut offset = offset.min(src.len());
    while !src.is_char_boundary(offset) {
        offset -= 1;
    }
    let before = &src[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions() {
        let src = "ab\ncdé\nf";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 3), (2, 1));
        assert_eq!(line_col(src, 7), (2, 4));
        assert_eq!(line_col(src, 8), (3, 1));
        assert_eq!(line_col(src, 6), (2, 3));
        assert_eq!(line_col(src, 100), (3, 2));
    }

    #[test]
    fn display_one_line_per_problem() {
        let e = PolicyError::new(
            "p.cedar",
            vec![
                PolicyDiagnostic {
                    line: Some(3),
                    column: Some(7),
                    message: "bad".into(),
                },
                PolicyDiagnostic {
                    line: None,
                    column: None,
                    message: "worse".into(),
                },
            ],
        );
        assert_eq!(e.to_string(), "p.cedar:3:7: bad\np.cedar: worse");
    }
}
