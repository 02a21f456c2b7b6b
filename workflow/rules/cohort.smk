rule cohort:
    input:
        unpack(omics_inputs),
        clinical=lambda wc: input_paths()["clinical"],
        sheet=lambda wc: input_paths()["sheet"],
        status="results/slide_status.tsv",
        features=feature_records,
    output:
        cohort=directory("results/cohort/{cohort}"),
    log:
        "logs/cohort/{cohort}.log",
    benchmark:
        "results/benchmarks/cohort/{cohort}.tsv"
    conda:
        "../../envs/survival.yaml"
    threads: 1
    resources:
        mem_mb=8000,
        runtime=30,
    params:
        args=cohort_args,
        features=f"results/features/{ENCODER_TAG}",
        encoder=ENCODER,
    shell:
        "python -m slotspe_pipe cohort --clinical {input.clinical} {params.args}"
        " --slides {input.sheet} --preflight-dir results/preflight"
        " --features {params.features} --encoder {params.encoder} --name {wildcards.cohort}"
        " -o {output.cohort} > {log} 2>&1"
