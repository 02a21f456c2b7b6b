rule segment:
    input:
        slide=slide_path,
        record="results/preflight/{slide}.json",
    output:
        tissue=directory("results/tissue/{slide}"),
    log:
        "logs/segment/{slide}.log",
    benchmark:
        "results/benchmarks/segment/{slide}.tsv"
    group:
        "slide_qc"
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        preset=config["segmentation"]["preset"],
        mpp=slide_mpp_arg,
        annotation=annotation_arg,
    shell:
        "python -m slotspe_pipe segment {input.slide} -o {output.tissue} --preset {params.preset}"
        " --preflight {input.record} {params.mpp} {params.annotation} > {log} 2>&1"
