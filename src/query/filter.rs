//! Metadata filters of a query: `{"team": "ops"}` (equality), `{"lang": ["en", "de"]}` or
//! `{"lang": {"in": ["en", "de"]}}` (any of). A document matches when every key matches; a
//! metadata value that is an array matches when any of its elements does. Filters apply before
//! ranking: the search deepens (more candidates from the index) until `top_k` matching chunks
//! are found or the index has no more, so a selective filter is not starved by the candidates of
//! documents it excludes.

use std::collections::BTreeMap;

use serde_json::Value;

/// What one key must be.
#[derive(Debug, Clone, PartialEq)]
enum Condition {
    Equals(Value),
    In(Vec<Value>),
}

/// A parsed filter (every condition must hold).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Filter {
    conditions: Vec<(String, Condition)>,
}

impl Filter {
    /// Parses a request's `filters`.
    ///
    /// # Errors
    /// A message naming the key whose condition is neither a value, a list, nor `{"in": [...]}`.
    pub fn parse(filters: Option<&BTreeMap<String, Value>>) -> Result<Self, String> {
        let mut conditions = Vec::new();
        for (key, value) in filters.into_iter().flatten() {
            let condition = match value {
                Value::Array(values) => Condition::In(values.clone()),
                Value::Object(object) => match (object.len(), object.get("in")) {
                    (1, Some(Value::Array(values))) => Condition::In(values.clone()),
                    _ => {
                        return Err(format!(
                            "filter `{key}` must be a value, a list of values, or {{\"in\": [values]}}"
                        ));
                    }
                },
                Value::Null => return Err(format!("filter `{key}` must not be null")),
                scalar => Condition::Equals(scalar.clone()),
            };
            conditions.push((key.clone(), condition));
        }
        Ok(Self { conditions })
    }

    /// Whether there is nothing to filter.
    pub fn is_empty(&self) -> bool {
        self.conditions.is_empty()
    }

    /// Whether a document with `metadata` matches.
    pub fn matches(&self, metadata: &Value) -> bool {
        self.conditions.iter().all(|(key, condition)| {
            let Some(found) = metadata.get(key) else { return false };
            let one = |value: &Value| match condition {
                Condition::Equals(want) => value == want,
                Condition::In(wanted) => wanted.contains(value),
            };
            match found {
                Value::Array(values) => values.iter().any(one),
                value => one(value),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn filter(value: Value) -> Result<Filter, String> {
        let map: BTreeMap<String, Value> = serde_json::from_value(value).expect("object");
        Filter::parse(Some(&map))
    }

    #[test]
    fn equality_lists_and_in_match_documents() {
        let doc = json!({"team": "ops", "lang": "en", "tags": ["keys", "security"], "year": 2024});
        assert!(Filter::parse(None).expect("none").matches(&doc));
        assert!(filter(json!({"team": "ops", "year": 2024})).expect("eq").matches(&doc));
        assert!(!filter(json!({"team": "dev"})).expect("eq").matches(&doc));
        assert!(filter(json!({"lang": ["de", "en"]})).expect("list").matches(&doc));
        assert!(filter(json!({"lang": {"in": ["en"]}})).expect("in").matches(&doc));
        assert!(!filter(json!({"lang": {"in": ["fr"]}})).expect("in").matches(&doc));
        assert!(filter(json!({"tags": "security"})).expect("array metadata").matches(&doc));
        assert!(!filter(json!({"missing": "x"})).expect("eq").matches(&doc), "a missing key never matches");
        assert!(!filter(json!({"year": "2024"})).expect("eq").matches(&doc), "types are compared too");
    }

    #[test]
    fn malformed_conditions_name_their_key() {
        assert!(filter(json!({"lang": {"gt": 3}})).expect_err("gt").contains("`lang`"));
        assert!(filter(json!({"lang": null})).expect_err("null").contains("`lang`"));
    }
}
