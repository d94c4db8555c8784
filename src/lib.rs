//! self-redteam: online self-play red-teaming (Self-RedTeam, arXiv 2506.07468) as a DAG of
//! content-addressed stages that exchange Parquet artifacts.
//!
//! Map of the crate (one line per module) and the data flow:
//!   pipeline.yaml --spec--> Spec --plan--> Plan (nodes stage@i with keys)
//!   --engine--> runs each missing node's stage (stages/) against the store (store/),
//!   which publishes artifacts/<stage>/<key>/ (Parquet per schema/, safetensors per model/).
//!
//! Two crates compile these sources: `self_redteam` (this package, feature `compute`: links
//! libtorch through tch) and `self_redteam_core` (core/Cargo.toml, without `compute`). Items
//! that need a model are `#[cfg(feature = "compute")]`; everything else — spec, plan, keys,
//! store, schemas, engine, executor, the data verbs — is in both, so the `self-redteam`
//! binary (core only) answers `status`, `log`, `show`, … without loading libtorch and runs
//! `self-redteam-compute` for stages and model verbs (docs/executor.md, "Two binaries").
pub mod cli; // clap commands; dispatches each to its verbs/ function and prints the result
pub mod data; // readers for the pinned source files of docs/resources.md
pub mod engine; // runs a plan against a store: skip hits, run misses, in order
pub mod eval; // suites, metrics (refusal, ASR, over-refusal, SBERT, Self-BLEU), paired stats (McNemar, Newcombe), report
pub mod executor; // how a miss is computed: in process, or one child process per node (`exec JOB`)
pub mod game; // roles, prompts, hidden-CoT parsing, outcomes and the reward table
pub mod judge; // judge backends behind one trait; verdict cache
#[cfg(feature = "compute")]
pub mod model; // Llama-family decoder in tch, GGUF/HF loading, tokenizer, sampler, BERT
pub mod net; // talking to inference servers: the engines' wire bodies, one HTTP client, work spread over servers
pub mod plan; // spec -> concrete DAG of nodes with keys
pub mod remote; // generation on inference servers (SGLang, vLLM, our own serve): the fleet client
pub mod rl; // REINFORCE++: KL, returns, per-role normalisation, clipped loss, LR
pub mod schema; // one module per Parquet artifact
pub mod serve; // the inference server behind `serve`: OpenAI text, SGLang and vLLM token-id protocols
pub mod spec; // pipeline.yaml -> typed, validated spec
#[path = "../stages/mod.rs"]
pub mod stages; // one file per stage kind (typed Params, run), and enum StageKind
pub mod store; // content-addressed artifact store
pub mod verbs; // one file per CLI verb (run, status, log, report, generate, judge, serve, …); each data verb's result is its --json shape
