use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{DType, Device, Tensor};
use std::time::Instant;

fn rss() -> f64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    for l in s.lines() {
        if l.starts_with("VmRSS") {
            return l.split_whitespace().nth(1).unwrap().parse::<f64>().unwrap() / 1024.0;
        }
    }
    0.0
}
fn main() {
    let (n, k) = (14336usize, 4096usize);
    let w = Tensor::randn(0f32, 0.02, (n, k), &Device::Cpu).unwrap();
    let t0 = Instant::now();
    let q = QTensor::quantize(&w, GgmlDType::Q4K).unwrap();
    println!("quantize {:.2}s", t0.elapsed().as_secs_f64());
    drop(w);
    println!(
        "rss after quantize {:.0} MiB, q bytes {:.0} MiB",
        rss(),
        q.storage_size_in_bytes() as f64 / 1048576.0
    );
    for m in [64usize, 512] {
        let x = Tensor::randn(0f32, 1.0, (m, k), &Device::Cpu).unwrap();
        for _ in 0..2 {
            let t = Instant::now();
            let y = x.apply_op1_no_bwd(&q).unwrap();
            let _ = y.sum_all().unwrap().to_scalar::<f32>().unwrap();
            println!(
                "m={m} candle qmatmul {:.3}s rss {:.0}",
                t.elapsed().as_secs_f64(),
                rss()
            );
        }
        for _ in 0..2 {
            let t = Instant::now();
            let d = q.dequantize(&Device::Cpu).unwrap();
            let td = t.elapsed().as_secs_f64();
            let y = x.matmul(&d.t().unwrap()).unwrap();
            let _ = y.sum_all().unwrap().to_scalar::<f32>().unwrap();
            println!(
                "m={m} dequant {td:.3}s + matmul total {:.3}s rss {:.0}",
                t.elapsed().as_secs_f64(),
                rss()
            );
        }
        // bf16
        let xb = x.to_dtype(DType::BF16).unwrap();
        let t = Instant::now();
        let y = xb.apply_op1_no_bwd(&q).unwrap();
        let _ = y
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!(
            "m={m} candle qmatmul bf16 in {:.3}s",
            t.elapsed().as_secs_f64()
        );
        let t = Instant::now();
        let d = q
            .dequantize(&Device::Cpu)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let y = xb.matmul(&d.t().unwrap()).unwrap();
        let _ = y
            .to_dtype(DType::F32)
            .unwrap()
            .sum_all()
            .unwrap()
            .to_scalar::<f32>()
            .unwrap();
        println!(
            "m={m} dequant bf16 + bf16 matmul {:.3}s",
            t.elapsed().as_secs_f64()
        );
    }
}
