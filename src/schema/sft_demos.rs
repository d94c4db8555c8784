//! `sft_demos.parquet` of the `sft-data` artifact: the demonstrations of the SFT term
//! (method.md §4.2, "post-filled CoT"): a benign request, its reference answer, and a reasoning
//! written afterwards by the base policy, joined in the defender's exact reasoning format.
//! Written by stages/sft_data.rs; read by every `update@i` when `update.sft_coef > 0`.
crate::parquet_schema! {
    /// One demonstration.
    pub struct SftDemoRow in SftDemosSchema ("sft_demos", 1) {
        /// `data::prompt_id` of the request.
        pub prompt_id: String,
        /// The benign request (the source's instruction).
        pub request: String,
        /// The reference answer as used (cut at a paragraph boundary when `cut`).
        pub response: String,
        /// True when the reference answer was longer than `sft.max_response_tokens` and was
        /// cut after its last paragraph that fits.
        pub cut: bool,
        /// The post-filled reasoning (stripped).
        pub thinking: String,
        /// The defender prompt, rendered by the chat template without the thinking prefix
        /// (the prefix is part of the target and carries loss, as in the original).
        pub prompt_text: String,
        /// `game::postfilled_sft_target(thinking, response)`.
        pub target_text: String,
        /// Token ids of `prompt_text`.
        pub prompt_ids: Vec<u32>,
        /// Token ids of `target_text` followed by the end-of-turn token, so the policy also
        /// learns to stop after `</answer>`.
        pub target_ids: Vec<u32>,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::{from_parquet_bytes, to_parquet_bytes};

    #[test]
    fn sft_demos_round_trip() {
        let rows = vec![SftDemoRow {
            prompt_id: "p".into(),
            request: "r".into(),
            response: "a".into(),
            cut: true,
            thinking: "t".into(),
            prompt_text: "<|im_start|>".into(),
            target_text: "x".into(),
            prompt_ids: vec![1, 2],
            target_ids: vec![3, 4, 2],
        }];
        assert_eq!(from_parquet_bytes::<SftDemosSchema>(to_parquet_bytes::<SftDemosSchema>(&rows).expect("write")).expect("read"), rows);
    }
}
