checkpoint demo_cohort:
    output:
        sheet=f"{DEMO_DIR}/slides.csv",
        clinical=f"{DEMO_DIR}/clinical.csv",
        rna=f"{DEMO_DIR}/rna.csv",
        gene_sets=f"{DEMO_DIR}/genesets.gmt",
    log:
        "logs/demo/demo_cohort.log",
    benchmark:
        "results/benchmarks/demo/demo_cohort.tsv"
    conda:
        "../../envs/slides.yaml"
    threads: 1
    resources:
        mem_mb=2000,
        runtime=30,
    params:
        patients=config["demo"].get("patients", 40),
        seed=config["demo"].get("seed", 0),
        broken=config["demo"].get("broken_slides", 1),
        slide_px=" ".join(str(v) for v in config["demo"].get("slide_px", [4000, 3000])),
        out=lambda wc, output: os.path.dirname(output.sheet),
    shell:
        "python -m slotspe_pipe demo cohort -o {params.out} --patients {params.patients}"
        " --seed {params.seed} --broken {params.broken} --slide-px {params.slide_px}"
        " > {log} 2>&1"
