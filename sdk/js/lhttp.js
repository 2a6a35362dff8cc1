// The lhttp JavaScript SDK.
