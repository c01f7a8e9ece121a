"""Language-model machinery shared by the `pretraining` and `sft` tasks: real text
sources (`corpora`), model presets and tokenizers (`models`), the per-worker training
loop (`training`), where fits and samples run (`backends`), and the settings and steps
both tasks share (`settings`). Nothing here imports Ray at module level."""
