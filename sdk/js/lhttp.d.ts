// TypeScript declarations of the lhttp JavaScript SDK.
