"""Built-in samplers, one per module. Their shared machinery (schedule, respacing, the
reverse chain) is :class:`diffret_cli.full_sampler.FullSampler`, public through
:mod:`diffret_cli.sdk`."""
