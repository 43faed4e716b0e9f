# Lints .github/workflows/release.yml where actionlint is not installed (Debian has no
# package): the YAML parses, and it has the shape GitHub Actions needs and the steps a
# release needs. Run by scripts/check-formula:
#   ruby Formula/test/check_workflow.rb WORKFLOW
require "yaml"

path = ARGV.fetch(0) { abort "usage: check_workflow.rb WORKFLOW" }
doc = YAML.safe_load(File.read(path, encoding: "UTF-8"), aliases: false)
problems = []

# YAML 1.1 reads a bare `on` key as true.
triggers = doc["on"] || doc[true]
problems << "no `on:` trigger" unless triggers
problems << "not triggered by tag pushes" unless triggers.is_a?(Hash) && triggers.dig("push", "tags")

jobs = doc["jobs"]
problems << "no jobs" unless jobs.is_a?(Hash) && !jobs.empty?
(jobs || {}).each do |name, job|
  runner = job["runs-on"].to_s
  problems << "job #{name}: runs-on #{runner.inspect} is not an Apple silicon macOS image" unless
    runner.match?(/\Amacos-(1[4-9]|[2-9]\d)(-xlarge)?\z/)
  steps = job["steps"]
  problems << "job #{name}: no steps" unless steps.is_a?(Array) && !steps.empty?
  (steps || []).each_with_index do |step, i|
    kinds = %w[uses run].select { |k| step.key?(k) }
    problems << "job #{name} step #{i + 1}: needs exactly one of uses/run" unless kinds.size == 1
    problems << "job #{name} step #{i + 1}: `uses` is not pinned to a version" if
      step["uses"] && !step["uses"].include?("@")
  end
  script = (steps || []).map { |s| s["run"].to_s }.join("\n")
  { "builds and tests" => "scripts/test", "makes a tarball" => "git archive", "checksums it" => "shasum -a 256",
    "bumps the formula" => "scripts/bump-formula", "checks the formula" => "scripts/check-formula",
    "runs brew test" => "brew test" }.each do |what, needle|
    problems << "job #{name} never #{what} (#{needle})" unless script.include?(needle)
  end
end

if problems.empty?
  puts "workflow OK: #{path}"
else
  problems.each { |p| warn "FAIL #{path}: #{p}" }
  exit 1
end
