rule preflight:
    input:
        slide=slide_path,
    output:
        record="results/preflight/{slide}.json",
    log:
        "logs/preflight/{slide}.log",
    benchmark:
        "results/benchmarks/preflight/{slide}.tsv"
    group:
        "slide_qc"
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    params:
        mpp=slide_mpp_arg,
    shell:
        "python -m slotspe_pipe preflight {input.slide} -o {output.record} --slide-id {wildcards.slide}"
        " {params.mpp} > {log} 2>&1"


checkpoint slide_status:
    input:
        preflight_records,
    output:
        table="results/slide_status.tsv",
    log:
        "logs/slide_status.log",
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=1000,
        runtime=10,
    shell:
        "python -m slotspe_pipe slide-status {input} -o {output.table} > {log} 2>&1"
