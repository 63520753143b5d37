#compdef regctl

_regctl_completion() {
  eval $(env _TYPER_COMPLETE_ARGS="${words[1,$CURRENT]}" _REGCTL_COMPLETE=complete_zsh regctl)
}

compdef _regctl_completion regctl

