//! `export`: merged models as llama.cpp GGUF files, read back by our GGUF loader.
//!
//! - f32 GGUFs of base + PEFT adapter give PEFT's logits within 1e-4 absolute;
//! - f16 and q8_0 store what ggml's reference quantizers store (against transformers with the
//!   merged weights rounded that way: 1e-4 relative L2), top-1 agreement with PEFT ≥ 90%;
//! - `llama` files carry q/k rows in llama.cpp's permuted order (the loader undoes it), Llama 3
//!   rope scaling as `rope_freqs`, tied embeddings without `output.weight`, gguf.md's required
//!   keys; `qwen3` files are not permuted;
//! - the tokenizer written from tokenizer.json encodes the sample data as tokenizer.json does;
//! - an output that is an input, or exists, is refused, and nothing partial is left.

use crate::common;

use candle_core::quantized::gguf_file::Content;
use candle_core::{DType, Device, Tensor};
use common::{expected, fixture, fixture_str, max_abs_diff};
use lora_dpo::adapter::load_adapter;
use lora_dpo::export::{export_gguf, parse_quant, ExportOptions};
use lora_dpo::model::{load_model, Pass};

fn options(quant: &str) -> ExportOptions {
    ExportOptions {
        quant: parse_quant(quant).unwrap(),
        tokenizer: false,
        ..ExportOptions::default()
    }
}

/// Exports `name` + its PEFT adapter as `quant`; the logits of the read-back GGUF on the
/// fixture batch's first row, and PEFT's.
fn exported_logits(name: &str, quant: &str) -> (Tensor, Tensor, Content) {
    let dir = fixture_str(&format!("models/{name}"));
    let hf = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
    let adapter = load_adapter(&format!("{dir}/adapter"), &hf.config, &Device::Cpu).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    let report = export_gguf(&dir, &[adapter], &out, &options(quant)).unwrap();
    assert_eq!(report.merged_tensors, 14, "{name}");
    let content = Content::read(&mut std::fs::File::open(&out).unwrap()).unwrap();
    let model = load_model(out.to_str().unwrap(), DType::F32, &Device::Cpu).unwrap();
    let exp = expected(name);
    let ids = exp["input_ids"]
        .to_dtype(DType::U32)
        .unwrap()
        .narrow(0, 0, 1)
        .unwrap();
    let ours = model
        .forward(&ids, None, Pass::eval(&[]))
        .unwrap()
        .get(0)
        .unwrap();
    let theirs = exp["logits_adapter"].get(0).unwrap();
    (ours, theirs, content)
}

/// transformers + PEFT's logits with the merged 2-D weights stored as `quant` stores them
/// (gguf-py's reference quantizers; scripts/make_export_fixtures.py).
fn stored_reference(name: &str, quant: &str) -> Tensor {
    let path = fixture(&format!("models/{name}/expected-export.safetensors"));
    let mut all = candle_core::safetensors::load(path, &Device::Cpu).unwrap();
    all.remove(&format!("logits_{quant}")).unwrap()
}

#[test]
fn f32_export_gives_pefts_logits() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        let (ours, theirs, content) = exported_logits(name, "f32");
        let d = max_abs_diff(&ours, &theirs);
        assert!(d < 1e-4, "{name} f32: {d}");
        let arch = content.metadata["general.architecture"]
            .to_string()
            .unwrap()
            .clone();
        assert_eq!(
            arch,
            if name == "tiny-llama" {
                "llama"
            } else {
                "qwen3"
            }
        );
    }
}

/// f16 and q8_0 against the same weights rounded by ggml's reference quantizers: 1e-4 relative
/// L2 (the stored values are the same; only the order of f32 sums differs). Against PEFT's
/// unrounded logits the rounding itself shows: measured rel L2 f16 1.9e-3 (tiny-llama) and
/// 9.6e-4 (tiny-qwen3), q8_0 1.9e-2; the top-1 token agrees at >= 90% of positions.
#[test]
fn f16_and_q8_0_exports_store_what_ggml_stores() {
    for name in ["tiny-llama", "tiny-qwen3"] {
        for quant in ["f16", "q8_0"] {
            let (ours, unrounded, content) = exported_logits(name, quant);
            let rel = common::rel_l2(&ours, &stored_reference(name, quant));
            assert!(rel < 1e-4, "{name} {quant}: {rel} vs the rounded reference");
            let loose = common::rel_l2(&ours, &unrounded);
            assert!(loose < 3e-2, "{name} {quant}: {loose} vs PEFT");
            let top = |t: &Tensor| -> Vec<u32> { t.argmax(1).unwrap().to_vec1().unwrap() };
            let (a, b) = (top(&ours), top(&unrounded));
            let agree = a.iter().zip(&b).filter(|(x, y)| x == y).count() as f64 / a.len() as f64;
            assert!(agree >= 0.9, "{name} {quant}: top-1 agreement {agree}");
            let q = &content.tensor_infos["blk.0.attn_q.weight"];
            assert_eq!(q.ggml_dtype, parse_quant(quant).unwrap(), "{name}");
            let norm = &content.tensor_infos["blk.0.attn_norm.weight"];
            assert_eq!(norm.ggml_dtype, candle_core::quantized::GgmlDType::F32);
        }
    }
}

#[test]
fn llama_files_hold_llama_cpp_layouts() {
    let (_, _, content) = exported_logits("tiny-llama", "f32");
    let md = &content.metadata;
    for key in [
        "general.architecture",
        "general.file_type",
        "general.quantization_version",
        "llama.context_length",
        "llama.embedding_length",
        "llama.feed_forward_length",
        "llama.block_count",
        "llama.attention.head_count",
        "llama.attention.head_count_kv",
        "llama.rope.freq_base",
        "llama.rope.dimension_count",
        "llama.attention.layer_norm_rms_epsilon",
    ] {
        assert!(md.contains_key(key), "missing {key}");
    }
    assert!(
        content.tensor_infos.contains_key("rope_freqs.weight"),
        "llama3 scaling"
    );
    assert!(!content.tensor_infos.contains_key("output.weight"), "tied");
    // ggml's dimension order: innermost first.
    let q = &content.tensor_infos["blk.0.attn_q.weight"];
    assert_eq!(q.shape.dims(), &[32, 32]);
}

/// A GGUF of tokenizer metadata alone (a `llama` file without tensors), as our loader reads it.
fn write_tokenizer_gguf(
    path: &std::path::Path,
    md: impl IntoIterator<Item = (String, candle_core::quantized::gguf_file::Value)>,
) {
    let mut all = vec![(
        "general.architecture".to_string(),
        candle_core::quantized::gguf_file::Value::String("llama".into()),
    )];
    all.extend(md);
    lora_dpo::export::gguf_writer::GgufWriter::create(path, &all, &[])
        .unwrap()
        .finish()
        .unwrap();
}

/// The first `per_file` lines of the SFT and DPO sample data, as raw text.
fn sample_lines(per_file: usize) -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    ["data/sft/train.jsonl", "data/dpo/train.jsonl"]
        .iter()
        .flat_map(|f| {
            let text = std::fs::read_to_string(root.join(f)).unwrap();
            let lines: Vec<String> = text.lines().take(per_file).map(str::to_string).collect();
            lines
        })
        .collect()
}

#[test]
fn the_tokenizer_written_from_tokenizer_json_encodes_like_it() {
    use lora_dpo::data::load_chat_tokenizer;
    let dir = fixture("data/smollm2");
    let (md, notes) = lora_dpo::export::vocab::from_hf(
        &dir.join("tokenizer.json"),
        Some(&dir.join("tokenizer_config.json")),
        Some(&dir.join("chat_template.jinja")),
    )
    .unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("tok.gguf");
    write_tokenizer_gguf(&path, md);
    let from_gguf = load_chat_tokenizer(&path).unwrap();
    let from_json = load_chat_tokenizer(&dir).unwrap();
    let lines = sample_lines(50);
    for line in &lines {
        let a = from_gguf.encode(line, false).unwrap();
        let b = from_json.encode(line, false).unwrap();
        assert_eq!(a, b, "{line}");
    }
    assert!(lines.len() >= 50);
    assert_eq!(from_gguf.eos.map(|t| t.id), from_json.eos.map(|t| t.id));
    assert_eq!(
        from_gguf.template.as_ref().map(|t| t.source().to_string()),
        from_json.template.as_ref().map(|t| t.source().to_string())
    );
}

/// A SentencePiece-style tokenizer.json (Llama-2's and Mistral's shape: BPE with byte fallback,
/// scripts/make_spm_tokenizer_fixture.py) exported as `llama`: read back with its merges, and
/// with the scores alone, as llama.cpp and transformers' GGUF reader read it, it encodes the
/// sample data as tokenizer.json does, bytes for what the vocabulary lacks.
#[test]
fn a_sentencepiece_vocabulary_exports_with_scores_that_rank_its_merges() {
    use lora_dpo::data::load_chat_tokenizer;
    let dir = fixture("data/spm-bpe");
    let (md, notes) = lora_dpo::export::vocab::from_hf(
        &dir.join("tokenizer.json"),
        Some(&dir.join("tokenizer_config.json")),
        None,
    )
    .unwrap();
    assert!(notes.is_empty(), "{notes:?}");
    let get = |key: &str| md.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
    assert_eq!(
        get("tokenizer.ggml.model").unwrap().to_string().unwrap(),
        "llama"
    );
    let types = get("tokenizer.ggml.token_type").unwrap();
    let types: Vec<i32> = (types.to_vec().unwrap().iter())
        .map(|v| v.to_i32().unwrap())
        .collect();
    assert_eq!(types[0x41 + 3], 6, "<0x41> is a byte token");
    assert_eq!(
        &types[..3],
        &[2, 3, 3],
        "<unk> unknown, <s> and </s> control"
    );
    let scores = get("tokenizer.ggml.scores").unwrap();
    assert!(
        (scores.to_vec().unwrap().iter()).any(|v| v.to_f32().unwrap() < -100.0),
        "scores follow the merge ranks"
    );
    let tmp = tempfile::tempdir().unwrap();
    let from_json = load_chat_tokenizer(&dir).unwrap();
    let mut lines = sample_lines(40);
    lines.push("Ljubljana  is   the capital; é, ß and 🙂 are not in the vocabulary.".into());
    for with_merges in [true, false] {
        let path = tmp.path().join(format!("tok-{with_merges}.gguf"));
        let kept = (md.iter()).filter(|&(k, _)| with_merges || k != "tokenizer.ggml.merges");
        write_tokenizer_gguf(&path, kept.cloned());
        let from_gguf = load_chat_tokenizer(&path).unwrap();
        for line in &lines {
            let a = from_gguf.encode(line, false).unwrap();
            let b = from_json.encode(line, false).unwrap();
            assert_eq!(a, b, "merges kept: {with_merges}: {line}");
        }
        assert_eq!(
            from_gguf.eos.as_ref().map(|t| t.id),
            from_json.eos.as_ref().map(|t| t.id)
        );
    }
}

#[test]
fn an_output_that_exists_or_is_an_input_is_refused_and_nothing_partial_is_left() {
    let dir = fixture_str("models/tiny-llama");
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m.gguf");
    std::fs::write(&out, b"keep me").unwrap();
    let err = export_gguf(&dir, &[], &out, &options("f16")).unwrap_err();
    assert!(format!("{err:#}").contains("--overwrite"), "{err:#}");
    assert_eq!(std::fs::read(&out).unwrap(), b"keep me");
    let gguf = fixture_str("models/tiny-gguf/tiny-qwen3-f32.gguf");
    let err = export_gguf(&gguf, &[], std::path::Path::new(&gguf), &options("f16")).unwrap_err();
    assert!(format!("{err:#}").contains("is an input"), "{err:#}");
    // Ministral: no llama.cpp architecture.
    let err = export_gguf(
        &fixture_str("models/tiny-ministral"),
        &[],
        &out,
        &ExportOptions {
            overwrite: true,
            ..options("f16")
        },
    )
    .unwrap_err();
    assert!(format!("{err:#}").contains("no architecture"), "{err:#}");
    let names: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 1, "{names:?}");
}

/// The LoRA GGUF applied as llama.cpp applies it (`W + alpha / r · B · A`, r from the tensors)
/// to the exported base equals the exported merged model, tensor by tensor within 1e-5 of each
/// tensor's magnitude: the names, the q/k permutation of B and the alpha (tiny-llama's adapter
/// is rsLoRA) agree with the merge, which the tests above hold to PEFT.
#[test]
fn the_lora_gguf_applied_like_llama_cpp_gives_the_merged_weights() {
    use lora_dpo::export::lora::export_lora_gguf;
    for name in ["tiny-llama", "tiny-qwen3"] {
        let dir = fixture_str(&format!("models/{name}"));
        let hf = load_model(&dir, DType::F32, &Device::Cpu).unwrap();
        let adapter = load_adapter(&format!("{dir}/adapter"), &hf.config, &Device::Cpu).unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let (base, merged, lora) = (
            tmp.path().join("base.gguf"),
            tmp.path().join("merged.gguf"),
            tmp.path().join("lora.gguf"),
        );
        export_gguf(&dir, &[], &base, &options("f32")).unwrap();
        export_gguf(
            &dir,
            std::slice::from_ref(&adapter),
            &merged,
            &options("f32"),
        )
        .unwrap();
        let written = export_lora_gguf(
            &adapter,
            &hf.config,
            &lora,
            parse_quant("f32").unwrap(),
            false,
        )
        .unwrap();
        assert_eq!(written, 14, "{name}");
        let open = |p: &std::path::Path| {
            let mut f = std::fs::File::open(p).unwrap();
            let c = Content::read(&mut f).unwrap();
            (c, f)
        };
        let (lc, mut lf) = open(&lora);
        let (bc, mut bf) = open(&base);
        let (mc, mut mf) = open(&merged);
        assert_eq!(lc.metadata["general.type"].to_string().unwrap(), "adapter");
        assert_eq!(lc.metadata["adapter.type"].to_string().unwrap(), "lora");
        let alpha = lc.metadata["adapter.lora.alpha"].to_f32().unwrap() as f64;
        let read = |c: &Content, f: &mut std::fs::File, n: &str| {
            c.tensor(f, n, &Device::Cpu)
                .unwrap()
                .dequantize(&Device::Cpu)
                .unwrap()
        };
        let names: Vec<String> = lc
            .tensor_infos
            .keys()
            .filter_map(|k| k.strip_suffix(".lora_a").map(str::to_string))
            .collect();
        assert_eq!(names.len(), 14);
        for weight in names {
            let a = read(&lc, &mut lf, &format!("{weight}.lora_a"));
            let b = read(&lc, &mut lf, &format!("{weight}.lora_b"));
            let r = a.dim(0).unwrap() as f64;
            let delta = (b.matmul(&a).unwrap() * (alpha / r)).unwrap();
            let applied = (read(&bc, &mut bf, &weight) + delta).unwrap();
            let want = read(&mc, &mut mf, &weight);
            let scale = want
                .abs()
                .unwrap()
                .max_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap();
            let d = max_abs_diff(&applied, &want) / scale;
            assert!(d < 1e-5, "{name} {weight}: {d}");
        }
    }
}
