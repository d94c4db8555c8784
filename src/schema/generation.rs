//! `generation.parquet` of a `rollout@i` or `eval@i` artifact that generated on inference
//! servers (`generation.backend: server`, src/remote/): which server, engine, engine version
//! and weight version produced each generated row. Absent from locally generated artifacts.
//! Written by `remote::Generator::provenance`; read by users auditing a run (`show`).
crate::parquet_schema! {
    /// One generated row.
    pub struct GenerationRow in GenerationSchema ("generation", 1) {
        /// The row's id in its artifact: `<game_id>/attacker` or `<game_id>/defender` in a
        /// rollout; `<suite>/<prompt id>` in an eval.
        pub item: String,
        /// The server's base URL.
        pub server: String,
        /// `sglang`, `vllm` or `self-redteam`.
        pub engine: String,
        /// What the server reported (`/version`, SGLang's `/get_server_info`).
        pub engine_version: String,
        /// The weight version the server reported for the row (`<node>:<key prefix>` after a
        /// load; the server's own label for the base policy).
        pub weight_version: String,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn generation_round_trip() {
        let rows = vec![GenerationRow {
            item: "g00001/defender".into(),
            server: "http://127.0.0.1:8000".into(),
            engine: "self-redteam".into(),
            engine_version: "0.1.0".into(),
            weight_version: "update@1:0123456789ab".into(),
        }];
        assert_eq!(from_parquet_bytes::<GenerationSchema>(to_parquet_bytes::<GenerationSchema>(&rows).expect("write")).expect("read"), rows);
    }
}
