rule train:
    input:
        cohort="results/cohort/{cohort}",
    output:
        metrics="results/models/{cohort}/{model}/seed_{seed}/fold_{fold}/metrics.json",
    log:
        "logs/train/{cohort}/{model}/seed_{seed}/fold_{fold}.log",
    benchmark:
        "results/benchmarks/train/{cohort}/{model}/seed_{seed}/fold_{fold}.tsv"
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=16000,
        runtime=240,
        gpu=1 if TRAIN.get("device", "cpu") == "cuda" else 0,
    params:
        run="results/models/{cohort}/{model}/seed_{seed}",
        args=train_args,
    shell:
        "python -m slotspe_pipe cv {input.cohort} --model {wildcards.model} --seed {wildcards.seed}"
        " --fold {wildcards.fold} {params.args} --replace-stale -o {params.run} > {log} 2>&1"


rule evaluate:
    input:
        cohort="results/cohort/{cohort}",
        folds=fold_metrics,
    output:
        summary="results/models/{cohort}/{model}/seed_{seed}/summary.json",
        predictions="results/models/{cohort}/{model}/seed_{seed}/predictions.csv",
        km=report(
            "results/models/{cohort}/{model}/seed_{seed}/km.png",
            caption="../report/km.rst",
            category="Survival models",
            subcategory="{model}",
        ),
    log:
        "logs/evaluate/{cohort}/{model}/seed_{seed}.log",
    conda:
        "../../envs/torch.yaml"
    threads: 1
    resources:
        mem_mb=4000,
        runtime=30,
    params:
        run="results/models/{cohort}/{model}/seed_{seed}",
    shell:
        "python -m slotspe_pipe cv {input.cohort} --model {wildcards.model} --seed {wildcards.seed}"
        " --aggregate -o {params.run} > {log} 2>&1"
