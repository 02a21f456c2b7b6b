rule tile:
    input:
        slide=slide_path,
        tissue="results/tissue/{slide}",
    output:
        tiles=directory("results/tiles/{slide}.zarr"),
        grid="results/tiles/{slide}.grid.png",
    log:
        "logs/tile/{slide}.log",
    benchmark:
        "results/benchmarks/tile/{slide}.tsv"
    group:
        "slide_qc"
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        target_mpp=config["tiling"]["target_mpp"],
        patch_px=config["tiling"]["patch_px"],
        overlap=config["tiling"].get("overlap", 0),
        min_tissue=config["tiling"].get("min_tissue", 0.5),
        mpp=slide_mpp_arg,
    shell:
        "python -m slotspe_pipe tile {input.slide} --tissue {input.tissue} -o {output.tiles}"
        " --target-mpp {params.target_mpp} --patch-px {params.patch_px}"
        " --overlap {params.overlap} --min-tissue {params.min_tissue} {params.mpp}"
        " --slide-id {wildcards.slide} --grid-png {output.grid} > {log} 2>&1"
