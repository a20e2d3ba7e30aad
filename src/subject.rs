//! Event subjects: the template that maps an event's attributes to the NATS subject it is
//! stored on. Interim implementation; the complete escaping scheme replaces it behind the same
//! API.

use crate::event::Event;

/// A parsed subject template such as `events.{source}.{subject}`.
#[derive(Debug, Clone)]
pub struct SubjectTemplate {
    parts: Vec<Part>,
}

#[derive(Debug, Clone)]
enum Part {
    Literal(String),
    Attribute(String),
}

/// Why a template or a rendering failed.
#[derive(Debug, thiserror::Error)]
pub enum SubjectError {
    /// The template is malformed.
    #[error("invalid subject template: {0}")]
    Template(String),
    /// The event lacks an attribute the template needs.
    #[error("attribute `{0}` is required by the stream's subject template")]
    Missing(String),
}

impl SubjectTemplate {
    /// Parses a template.
    pub fn parse(template: &str) -> Result<SubjectTemplate, SubjectError> {
        let mut parts = Vec::new();
        for token in template.split('.') {
            if let Some(name) = token.strip_prefix('{').and_then(|t| t.strip_suffix('}')) {
                parts.push(Part::Attribute(name.to_owned()));
            } else if token.is_empty() || token.contains(['{', '}', '*', '>']) {
                return Err(SubjectError::Template(format!(
                    "bad token `{token}` in `{template}`"
                )));
            } else {
                parts.push(Part::Literal(token.to_owned()));
            }
        }
        Ok(SubjectTemplate { parts })
    }

    /// Renders the subject for `event`.
    pub fn render(&self, event: &Event) -> Result<String, SubjectError> {
        let mut out = String::new();
        for (i, part) in self.parts.iter().enumerate() {
            if i > 0 {
                out.push('.');
            }
            match part {
                Part::Literal(l) => out.push_str(l),
                Part::Attribute(name) => match event.attribute(name) {
                    Some(v) => escape_token(&v.to_canonical_string(), &mut out),
                    None if name == "subject" => out.push('_'),
                    None => return Err(SubjectError::Missing(name.clone())),
                },
            }
        }
        Ok(out)
    }
}

/// Appends `value` as one subject token, hex-escaping everything but `[A-Za-z0-9-]`.
pub fn escape_token(value: &str, out: &mut String) {
    out.push('~');
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("_{b:02X}"));
        }
    }
}
