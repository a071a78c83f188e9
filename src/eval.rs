//! Retrieval evaluation on BEIR-format datasets (`corpus.jsonl`, `queries.jsonl`,
//! `qrels/<split>.tsv`): loading them, and the standard measures computed as BEIR reports them
//! (pytrec_eval's definitions: nDCG with linear gains, recall over the judged-relevant documents,
//! reciprocal rank of the first relevant one). `ragpipe eval` ([`crate::cli`]) runs the queries
//! through the real query path and scores the ranked documents with these.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use anyhow::Context;
use serde::Deserialize;

/// One corpus document.
#[derive(Debug, Clone, Deserialize)]
pub struct Document {
    /// BEIR id.
    #[serde(rename = "_id")]
    pub id: String,
    /// Title (may be empty).
    #[serde(default)]
    pub title: String,
    /// Body text.
    pub text: String,
}

impl Document {
    /// The text ingested for it: title, blank line, body.
    pub fn content(&self) -> String {
        if self.title.trim().is_empty() { self.text.clone() } else { format!("{}\n\n{}", self.title.trim(), self.text) }
    }
}

/// One query.
#[derive(Debug, Clone, Deserialize)]
pub struct Query {
    /// BEIR id.
    #[serde(rename = "_id")]
    pub id: String,
    /// The query text.
    pub text: String,
}

/// A dataset: documents, the queries that have judgements in the split, and the judgements
/// (query id → document id → relevance grade).
pub struct Dataset {
    /// Corpus.
    pub documents: Vec<Document>,
    /// Judged queries, in file order.
    pub queries: Vec<Query>,
    /// Relevance grades.
    pub qrels: HashMap<String, HashMap<String, u32>>,
}

fn read_jsonl<T: serde::de::DeserializeOwned>(path: &Path) -> anyhow::Result<Vec<T>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(i, line)| serde_json::from_str(line).with_context(|| format!("{} line {}", path.display(), i + 1)))
        .collect()
}

impl Dataset {
    /// Loads `dir` with the judgements of `split` (`qrels/<split>.tsv`).
    ///
    /// # Errors
    /// A file is missing or malformed.
    pub fn load(dir: &Path, split: &str) -> anyhow::Result<Self> {
        Self::load_files(
            &dir.join("corpus.jsonl"),
            &dir.join("queries.jsonl"),
            &dir.join("qrels").join(format!("{split}.tsv")),
        )
    }

    /// Loads the three BEIR files (qrels: tab-separated `query-id corpus-id score`, header row
    /// and CRLF line ends allowed).
    ///
    /// # Errors
    /// A file is missing or malformed.
    pub fn load_files(corpus: &Path, queries: &Path, qrels_path: &Path) -> anyhow::Result<Self> {
        let documents: Vec<Document> = read_jsonl(corpus)?;
        let tsv = std::fs::read_to_string(qrels_path).with_context(|| format!("reading {}", qrels_path.display()))?;
        let mut qrels: HashMap<String, HashMap<String, u32>> = HashMap::new();
        for (i, line) in tsv.lines().enumerate() {
            let fields: Vec<&str> = line.trim_end_matches('\r').split('\t').collect();
            if fields.len() < 3 || (i == 0 && fields[2].trim().parse::<u32>().is_err()) {
                continue;
            }
            let grade = fields[2]
                .trim()
                .parse()
                .with_context(|| format!("{} line {}: bad relevance `{}`", qrels_path.display(), i + 1, fields[2]))?;
            qrels.entry(fields[0].to_owned()).or_default().insert(fields[1].to_owned(), grade);
        }
        let queries = read_jsonl::<Query>(queries)?
            .into_iter()
            .filter(|q| qrels.get(&q.id).is_some_and(|judged| judged.values().any(|&g| g > 0)))
            .collect();
        Ok(Self { documents, queries, qrels })
    }
}

/// Scores of one ranking.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Scores {
    /// nDCG@10.
    pub ndcg_10: f64,
    /// Recall@10.
    pub recall_10: f64,
    /// Recall@100.
    pub recall_100: f64,
    /// Reciprocal rank of the first relevant document in the top 10 (MRR@10 when averaged).
    pub mrr_10: f64,
}

/// Scores `ranked` (document ids, best first, each once) against `judged` (id → grade).
pub fn score(ranked: &[String], judged: &HashMap<String, u32>) -> Scores {
    let grade = |id: &String| judged.get(id).copied().unwrap_or(0);
    let dcg: f64 =
        ranked.iter().take(10).enumerate().map(|(i, id)| f64::from(grade(id)) / (i as f64 + 2.0).log2()).sum();
    let mut ideal: Vec<u32> = judged.values().copied().filter(|&g| g > 0).collect();
    ideal.sort_unstable_by(|a, b| b.cmp(a));
    let idcg: f64 = ideal.iter().take(10).enumerate().map(|(i, &g)| f64::from(g) / (i as f64 + 2.0).log2()).sum();
    let relevant = ideal.len().max(1) as f64;
    let found = |k: usize| ranked.iter().take(k).filter(|id| grade(id) > 0).count() as f64;
    let first = ranked.iter().take(10).position(|id| grade(id) > 0);
    Scores {
        ndcg_10: if idcg > 0.0 { dcg / idcg } else { 0.0 },
        recall_10: found(10) / relevant,
        recall_100: found(100) / relevant,
        mrr_10: first.map_or(0.0, |i| 1.0 / (i as f64 + 1.0)),
    }
}

/// The mean of `scores`.
pub fn mean(scores: &[Scores]) -> Scores {
    let n = scores.len().max(1) as f64;
    let sum = |f: fn(&Scores) -> f64| scores.iter().map(f).sum::<f64>() / n;
    Scores {
        ndcg_10: sum(|s| s.ndcg_10),
        recall_10: sum(|s| s.recall_10),
        recall_100: sum(|s| s.recall_100),
        mrr_10: sum(|s| s.mrr_10),
    }
}

/// Document ids in order of their first chunk in `chunk_documents` (a ranking of chunks), each
/// once.
pub fn rank_documents<'a>(chunk_documents: impl IntoIterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    chunk_documents.into_iter().filter(|id| seen.insert(*id)).map(str::to_owned).collect()
}

/// Summary lines for a report: metric name → value.
pub fn report(scores: &Scores) -> BTreeMap<&'static str, f64> {
    BTreeMap::from([
        ("ndcg@10", scores.ndcg_10),
        ("recall@10", scores.recall_10),
        ("recall@100", scores.recall_100),
        ("mrr@10", scores.mrr_10),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judged(pairs: &[(&str, u32)]) -> HashMap<String, u32> {
        pairs.iter().map(|(id, g)| ((*id).to_owned(), *g)).collect()
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn scores_follow_the_trec_definitions() {
        let qrels = judged(&[("a", 1), ("b", 1)]);
        let perfect = score(&ids(&["a", "b", "x"]), &qrels);
        assert_eq!(perfect, Scores { ndcg_10: 1.0, recall_10: 1.0, recall_100: 1.0, mrr_10: 1.0 });
        // Relevant at ranks 2 and 4: DCG = 1/log2(3) + 1/log2(5); IDCG = 1 + 1/log2(3).
        let s = score(&ids(&["x", "a", "y", "b"]), &qrels);
        let want = (1.0 / 3f64.log2() + 1.0 / 5f64.log2()) / (1.0 + 1.0 / 3f64.log2());
        assert!((s.ndcg_10 - want).abs() < 1e-12, "{s:?}");
        assert!((s.mrr_10 - 0.5).abs() < 1e-12);
        // One relevant document only at rank 11: in recall@100, not in the @10 measures.
        let late: Vec<String> = (0..10).map(|i| format!("x{i}")).chain(["a".to_owned()]).collect();
        let s = score(&late, &qrels);
        assert_eq!((s.ndcg_10, s.recall_10, s.recall_100, s.mrr_10), (0.0, 0.0, 0.5, 0.0));
        let m = mean(&[perfect, s]);
        assert!((m.recall_100 - 0.75).abs() < 1e-12);
    }

    #[test]
    fn documents_rank_by_their_best_chunk() {
        assert_eq!(rank_documents(["7", "3", "7", "9", "3"]), ids(&["7", "3", "9"]));
    }

    #[test]
    fn qrels_with_a_header_and_crlf_line_ends_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = |name: &str, text: &str| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write");
            path
        };
        let corpus = file("c.jsonl", "{\"_id\": \"d1\", \"text\": \"x\"}\r\n");
        let queries = file("q.jsonl", "{\"_id\": \"q1\", \"text\": \"x\"}\r\n{\"_id\": \"q2\", \"text\": \"y\"}\r\n");
        let qrels = file("r.tsv", "query-id\tcorpus-id\tscore\r\nq1\td1\t2\r\nq2\td1\t0\r\n");
        let data = Dataset::load_files(&corpus, &queries, &qrels).expect("load");
        assert_eq!(data.qrels["q1"]["d1"], 2);
        assert_eq!(
            data.queries.iter().map(|q| q.id.as_str()).collect::<Vec<_>>(),
            vec!["q1"],
            "q2 has no relevant document"
        );
    }

    #[test]
    fn the_development_set_loads_with_its_judged_queries() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/eval/scifact-train");
        let data = Dataset::load(&dir, "train").expect("load");
        assert_eq!(data.documents.len(), 5183);
        assert_eq!(data.queries.len(), 809);
        assert!(data.queries.iter().all(|q| data.qrels.contains_key(&q.id)));
        assert!(data.documents[0].content().contains("\n\n"));
    }
}
