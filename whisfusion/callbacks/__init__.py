"""Training callbacks and guards (import from the modules directly):
ema               `EMA`: moving average of the decoder weights, used for validation, checkpointed
preemption        `StopOnSignal`: SIGUSR1 / SIGTERM -> save last.ckpt at a step boundary, requeue
nonfinite         `NonFiniteGuard`: skip optimizer steps with a non-finite loss, stop after a run
data_stats        `DataStatsLogger`: read / kept / skipped-by-reason counts, summed over ranks
attention_anneal  `AttentionAnneal`: a Whisper-started decoder's self-attention, causal to
                  bidirectional over the first steps
"""
