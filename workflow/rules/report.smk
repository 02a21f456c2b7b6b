rule report:
    input:
        status="results/slide_status.tsv",
        preflight=preflight_records,
        features=feature_records,
        cohort="results/cohort/{cohort}",
        summaries=lambda wc: model_summaries(wc.cohort),
    output:
        html=report(
            "results/report/{cohort}/report.html",
            caption="../report/report.rst",
            category="Report",
        ),
    log:
        "logs/report/{cohort}.log",
    conda:
        "../../envs/survival.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=20,
    params:
        encoder_tag=ENCODER_TAG,
        models=lambda wc: f"results/models/{wc.cohort}",
        attention=config.get("report", {}).get("attention_patients", 3),
    shell:
        "python -m slotspe_pipe report --cohort-dir {input.cohort} --status {input.status}"
        " --preflight-dir results/preflight --tissue-dir results/tissue"
        " --tiles-dir results/tiles --features-dir results/features/{params.encoder_tag}"
        " --models-dir {params.models} --attention-patients {params.attention}"
        " -o {output.html} > {log} 2>&1"
