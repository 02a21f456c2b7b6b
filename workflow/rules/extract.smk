EXTRACT = config["extraction"]


rule extract:
    input:
        slide=slide_path,
        tiles="results/tiles/{slide}.zarr",
    output:
        status="results/features/{encoder}/{slide}.json",
    log:
        "logs/extract/{encoder}/{slide}.log",
    benchmark:
        "results/benchmarks/extract/{encoder}/{slide}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: max(1, EXTRACT.get("workers", 1))
    resources:
        mem_mb=8000,
        runtime=60,
        gpu=1 if EXTRACT.get("device", "cpu") == "cuda" else 0,
    params:
        store=lambda wc: f"results/features/{wc.encoder}/{wc.slide}.zarr",
        encoder=EXTRACT["encoder"],
        weights=f"--weights {EXTRACT['weights']}" if EXTRACT.get("weights") else "",
        random=(
            "--allow-random-weights"
            if EXTRACT.get("allow_random_weights", False)
            else ""
        ),
        batch_size=EXTRACT.get("batch_size", 64),
        device=EXTRACT.get("device", "cpu"),
        workers=EXTRACT.get("workers", 1),
        mpp=slide_mpp_arg,
    shell:
        "python -m slotspe_pipe extract {input.slide} --tiles {input.tiles} -o {params.store}"
        " --encoder {params.encoder} {params.weights} {params.random}"
        " --batch-size {params.batch_size} --device {params.device}"
        " --workers {params.workers} {params.mpp} --status-json {output.status}"
        " > {log} 2>&1"
